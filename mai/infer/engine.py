"""The inference engine: one model step serves every running request (continuous batching).

Everything that generates goes through here — the server, ``mai generate``/``mai chat``
(:class:`mai.infer.generate.Generation` steps an engine on its own thread), generative evaluation and
lm-eval's ``generate_until`` — so penalties, constraints, sampling, logprobs, stop strings and token
budgets live in one per-request token step (:meth:`Engine._emit`).

Keys and values live in a paged pool (:mod:`mai.infer.kv_cache`, :mod:`mai.infer.blocks`) with
automatic prefix caching: a request whose prompt starts with blocks another request computed reuses
them and prefills only the rest. Each step (:mod:`mai.infer.scheduler`) carries one token of every
decoding request plus prefill chunks under a token budget, so a long prompt never stalls the streams
beside it; when blocks run out the newest request is preempted and later recomputed, never dropped.
Each request keeps its own sampling parameters, seeded generator, stop tokens and stop strings. Results
arrive through a per-request callback (called on the engine thread) as :class:`Event`s. A request may
name one of the engine's LoRA adapters (:mod:`mai.infer.lora_serving`): requests of different adapters
and of the base share a step, each token through its own adapter, and an adapter's prompt blocks are
cached apart from the base's (its id salts the block hashes).

Faults stay as small as they can be: an exception while computing one request's token (penalties,
constraint, sampling, stop strings, detokenising) ends that request alone with ``finish_reason="error"``;
a failure of the shared model step ends the requests of that step, frees their blocks, and a one-token
probe tells whether the model can still step (:attr:`Engine.state`). Requests still waiting are
untouched. Should the engine thread end for any reason, every outstanding request is finished, so no
caller waits forever.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mai.errors import MaiError
from mai.infer.blocks import BLOCK_SIZE, BlockManager
from mai.infer.constraint import Constraint, ConstraintFactory, json_mode_factory
from mai.infer.lora_serving import AdapterBank
from mai.infer.runner import ModelRunner, StepBatch
from mai.infer.sampling import SamplingParams, apply_penalties, sample_row
from mai.infer.scheduler import Scheduler, SeqState
from mai.infer.speculative import Proposer, verify
from mai.infer.textstream import TextStream
from mai.model.transformer import KVCache, Transformer

log = logging.getLogger("mai.engine")


DEFAULT_BATCHED_TOKENS = 512  # a step's token budget: decoding rows + prefill chunks
DEFAULT_POOL_BLOCKS = 4096  # 65,536 token positions at most unless asked (untouched pages cost nothing)


class EngineStopped(MaiError):
    """The engine no longer takes requests (shut down, or its thread died)."""


def token_texts(decode: Callable[[list[int]], str], vocab_size: int) -> list[str]:
    """The text of every token id alone (for logprobs and JSON mode)."""
    return [decode([i]) for i in range(vocab_size)]


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Event:
    """New text of one request; ``finish_reason`` is set on its last event."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    error: str | None = None  # with finish_reason "error": what went wrong (for the log and the client)


@dataclass
class EngineStats:
    """What /metrics reports about an engine's KV pool, scheduling and speculative decoding."""

    total_blocks: int
    free_blocks: int  # never used, or holding a cached prefix nobody references (evictable)
    cached_blocks: int  # blocks findable by prefix hash
    prefix_queried_tokens: int  # prompt tokens (in full blocks) looked up in the prefix cache
    prefix_hit_tokens: int  # of those, tokens whose keys/values were reused
    preemptions: int
    draft_tokens: int  # speculative tokens proposed
    accepted_tokens: int  # of those, accepted by the target model
    compiled_steps: int  # steps run as compiled graphs (a catalog model with compile: true)
    mixed_adapter_steps: int  # steps whose tokens went through more than one LoRA adapter (or none and one)


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[Request, Event], None] | None = None
    id: int = 0
    adapter: int = 0  # the engine's LoRA adapter id, 0 = the base model
    # filled in by the engine
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    arrived: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None  # left the queue
    first_token: float | None = None
    finished: float | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class _Running:
    """Engine-side state of a request: its sequence (tokens, blocks) and, once it is first scheduled,
    its token-step state (generator, text stream, constraint)."""

    def __init__(self, req: Request):
        self.req = req
        self.seq = SeqState(list(req.prompt_ids), self, salt=f"lora:{req.adapter}".encode() if req.adapter
                            else b"")
        self.started = False
        self.gen: torch.Generator
        self.stream: TextStream
        self.budget = 0
        self.constraint: Constraint | None = None
        self.pending: list[TokenLogprob] = []
        self.draft_q: list[torch.Tensor] | None = None  # the distributions the drafts were drawn from

    def begin(self, decode: Callable[[list[int]], str], max_seq_len: int,
              constraints: ConstraintFactory) -> None:
        self.req.scheduled = time.perf_counter()
        self.gen = self.req.params.generator()
        self.stream = TextStream(decode, self.req.params.stop)
        self.budget = min(self.req.params.max_tokens, max_seq_len - len(self.req.prompt_ids))
        self.constraint = constraints(self.req.params)
        self.started = True


class Engine:
    """Continuous batching over one model. Drive it with :meth:`step` or a background :meth:`start`.

    ``max_num_batched_tokens`` is a step's token budget (decoding rows + prefill chunks; at least
    ``max_batch``); ``kv_blocks`` the size of the KV pool in blocks of 16 positions (by default enough
    for ``max_batch`` full-length requests, capped at ``DEFAULT_POOL_BLOCKS``, never less than one
    full-length request); ``prefix_caching`` reuses computed prompt blocks across requests; ``runner``
    executes steps (eager by default, or :class:`mai.infer.compiled_decode.CompiledDecoder`);
    ``recompute`` drops every key and value after each step — the slow reference the cached path must
    match (``Generation(use_cache=False)``); ``speculative`` drafts up to ``num_speculative_tokens``
    tokens per decoding request and step (:mod:`mai.infer.speculative`; with adapters, the target's
    verification runs each draft through its request's adapter); ``adapters`` are the LoRA adapters
    requests may name (:meth:`submit`), applied by the eager runner (a ``runner`` of its own must have been
    made with the same bank: compiled decoding does not apply adapters)."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], stop_ids: Sequence[int] = (),
                 max_batch: int = 32, max_seq_len: int | None = None, token_texts: list[str] | None = None,
                 constraints: ConstraintFactory | None = None, max_num_batched_tokens: int | None = None,
                 kv_blocks: int | None = None, prefix_caching: bool = True, runner: ModelRunner | None = None,
                 recompute: bool = False, speculative: Proposer | None = None,
                 num_speculative_tokens: int = 4, adapters: AdapterBank | None = None):
        self.model, self.decode, self.stop_ids = model, decode, set(stop_ids)
        self.max_batch = max_batch
        self.max_seq_len = min(max_seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.token_texts = token_texts  # text of every token id: needed for logprobs (and JSON mode)
        self.constraints = constraints or json_mode_factory(token_texts)  # request → its output constraint
        self.runner = runner or ModelRunner(model, adapters)
        if adapters is not None and self.runner.adapters is not adapters:
            raise MaiError(f"LoRA adapters ({', '.join(adapters.names)}) need the eager model runner made "
                           "with them; compiled decoding and other runners do not apply adapters")
        self.recompute = recompute
        self.speculative, self.num_speculative_tokens = speculative, num_speculative_tokens
        budget = max_num_batched_tokens or max(DEFAULT_BATCHED_TOKENS, max_batch)
        if budget < max_batch:
            raise MaiError(f"max_num_batched_tokens ({budget}) must be at least max_batch ({max_batch}): "
                           "every decoding request takes one token of each step")
        per_request = -(-self.max_seq_len // BLOCK_SIZE)
        blocks = kv_blocks or min(max_batch * per_request, max(DEFAULT_POOL_BLOCKS, per_request))
        if blocks < per_request:
            raise MaiError(f"a KV pool of {blocks} blocks cannot hold one request of {self.max_seq_len} "
                           f"tokens ({per_request} blocks of {BLOCK_SIZE})")
        self.blocks = BlockManager(blocks + 1, BLOCK_SIZE)  # + the reserved scratch block
        self.scheduler = Scheduler(self.blocks, max_batch, self.max_seq_len if recompute else budget,
                                   prefix_caching and not recompute)
        self.cache = self.runner.make_cache(self.blocks.num_blocks, BLOCK_SIZE)
        self.lock = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._closed = False  # set once outstanding requests were abandoned: submit() refuses from then on
        self.error: str | None = None  # why the model cannot step (set by a failed probe), else None
        self.steps = 0  # model steps run so far (tests count steps, not seconds)
        self.computed_tokens = 0  # tokens whose keys/values were computed (prefix-cache hits are not)
        self.preemptions = 0  # requests sent back to the queue for want of blocks
        self.draft_tokens = self.accepted_tokens = 0  # speculative decoding's proposals and acceptances
        self.mixed_adapter_steps = 0  # steps that served more than one adapter (the base counts as one)

    # --- the public API (thread-safe) ------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               on_event: Callable[[Request, Event], None] | None = None, adapter: int = 0) -> Request:
        """Queue a request; ``adapter`` is the id of one of the engine's LoRA adapters (0: the base)."""
        served = len(self.runner.adapters or ())
        if not 0 <= adapter <= served:
            raise MaiError(f"LoRA adapter {adapter} is not one of this engine's {served} adapters")
        if not prompt_ids:
            raise MaiError("the prompt is empty")
        if len(prompt_ids) >= self.max_seq_len:
            raise MaiError(f"the prompt has {len(prompt_ids)} tokens; this model's context is "
                           f"{self.max_seq_len} tokens including the answer")
        vocab = self.model.cfg.vocab_size
        if not all(0 <= t < vocab for t in prompt_ids):
            raise MaiError(f"the prompt has token ids outside this model's vocabulary (0..{vocab - 1})")
        req = Request(list(prompt_ids), params, on_event, next(self._ids), adapter)
        with self.lock:
            if self._closed or self._stop:
                raise EngineStopped("the engine has stopped")
            self.scheduler.waiting.append(_Running(req).seq)
            self.lock.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Stop ``req`` at the next step boundary (the client went away); its blocks are freed then."""
        req.cancelled = True
        with self.lock:
            self.lock.notify()

    def cancel_all(self) -> None:
        """Cancel every running and waiting request (a drain whose grace period ran out)."""
        with self.lock:
            for seq in [*self.scheduler.running, *self.scheduler.waiting]:
                seq.owner.req.cancelled = True
            self.lock.notify()

    @property
    def state(self) -> str:
        """``ok``; ``stopped`` once the background thread has ended (shut down or died); ``failing`` when
        the last step failed and the model could not run a one-token probe since."""
        if self._closed or (self._thread is not None and (self._stop or not self._thread.is_alive())):
            return "stopped"
        return "failing" if self.error else "ok"

    @property
    def n_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def n_waiting(self) -> int:
        return len(self.scheduler.waiting)

    def stats(self) -> EngineStats:
        """Pool, prefix-cache, preemption and speculative counts, for /metrics."""
        b = self.blocks
        return EngineStats(b.num_blocks - 1, b.num_free, len(b.by_hash), b.queried_tokens, b.hit_tokens,
                           self.preemptions, self.draft_tokens, self.accepted_tokens,
                           self.runner.compiled_steps, self.mixed_adapter_steps)

    def generate(self, prompt_ids: Sequence[int], params: SamplingParams) -> Request:
        """Run one request to the end on the calling thread (or wait for the background thread)."""
        req = self.submit(prompt_ids, params)
        while not req.done.is_set():
            if self._thread is None:
                self.step()
            else:
                req.done.wait(0.05)
        return req

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mai-engine", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread; requests still outstanding end as ``cancelled``."""
        with self.lock:
            self._stop = True
            self.lock.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # --- the thread ------------------------------------------------------------------------------
    def _loop(self) -> None:
        reason, error = "cancelled", None
        try:
            while self._wait_for_work():
                try:
                    self.step()
                except Exception as exc:  # a bug in the bookkeeping: fail the running requests only
                    log.exception("mai engine: step failed")
                    self._fail(list(self.scheduler.running), f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # the thread itself dies (logged, not re-raised): nobody may wait for it
            reason, error = "error", f"the engine stopped: {type(exc).__name__}: {exc}"
            log.exception("mai engine: thread died")
        finally:
            self._abandon(reason, error)

    def _wait_for_work(self) -> bool:
        """Block until there is something to do (False: stop). A failing engine re-probes the model
        every second while idle, so that its state recovers without a request having to fail first."""
        with self.lock:
            while not self._stop and not self.scheduler.waiting and not self.scheduler.running:
                if self.error is None:
                    self.lock.wait()
                elif not self.lock.wait(1.0):
                    self._probe()
            return not self._stop

    def _abandon(self, reason: str, error: str | None) -> None:
        """Finish every request the engine still holds (it is stopping or its thread died)."""
        with self.lock:
            self._closed = True
            left = [*self.scheduler.running, *self.scheduler.waiting]
            self.scheduler.waiting.clear()
        for seq in left:
            self.scheduler.finish(seq)
            if not seq.owner.req.done.is_set():
                self._end(seq.owner.req, reason, seq.owner.pending, error)

    def _fail(self, seqs: list[SeqState], error: str) -> None:
        """After a failed shared step: end its requests, free their blocks, probe the model."""
        for seq in seqs:
            self.scheduler.finish(seq)
            self._end(seq.owner.req, "error", seq.owner.pending, error)
        self._probe()

    @torch.inference_mode()
    def _probe(self) -> None:
        """One token through the model: sets :attr:`error` to why it cannot step, or clears it."""
        try:
            self.model(torch.zeros(1, 1, dtype=torch.long, device=self.runner.device),
                       KVCache(self.model.cfg, 1, 1, self.runner.device, self.runner.dtype), last_only=True)
            self.error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self.error:  # once per change, not at every idle re-probe
                log.error("mai engine: the model cannot step: %s", error)
            self.error = error

    # --- one step --------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Retire cancelled requests, schedule (decoding rows + prefill chunks), run the model once,
        then the token step of every request whose tokens are all computed."""
        self._drop_cancelled()
        self._propose()
        with self.lock:
            plan = self.scheduler.schedule()
        self.preemptions += len(plan.preempted)
        chunks = [(seq, n) for seq, n in plan.chunks if self._begin(seq.owner)]
        if not chunks:
            return
        batch = self._batch(chunks)
        try:
            logits = self.runner.run(self.cache, batch)
        except Exception as exc:
            log.exception("mai engine: the model step failed")
            self._fail([seq for seq, _ in chunks], f"{type(exc).__name__}: {exc}")
            return
        self.error = None
        self.steps += 1
        self.mixed_adapter_steps += len({seq.owner.req.adapter for seq, _ in chunks}) > 1
        at = 0
        for seq, n in chunks:
            self.computed_tokens += n
            if seq.drafts:
                self._verify(seq, logits[at : at + n])
                at += n
                continue
            self.scheduler.computed(seq, n)
            if seq.remaining == 0:
                self._emit_guarded(seq.owner, logits[at])
                at += 1
        if self.recompute:
            for seq in self.scheduler.running:
                self.scheduler.release(seq)

    def _propose(self) -> None:
        """Drafts for every decoding request (a proposer's failure only loses the speed-up)."""
        if self.speculative is None:
            return
        for seq in self.scheduler.running:
            run = seq.owner
            room = min(self.num_speculative_tokens, run.budget - len(run.req.token_ids) - 1,
                       self.max_seq_len - len(seq.tokens))
            if seq.remaining != 1 or not run.started or room <= 0:
                continue
            try:
                seq.drafts, run.draft_q = self.speculative.propose(run.req.id, seq.tokens, room,
                                                                   run.req.params, run.gen)
            except Exception:
                log.exception("mai engine: drafting for request %d failed", run.req.id)
                seq.drafts, run.draft_q = [], None

    def _verify(self, seq: SeqState, logits: torch.Tensor) -> None:
        """Walk the target's logits at the last token and each draft: keep drafts while :func:`verify`
        accepts them; the first rejection (or the position after the last draft) gives one more token."""
        run, drafts, qs = seq.owner, seq.drafts, seq.owner.draft_q
        seq.drafts, run.draft_q = [], None
        kept = 0
        for i, row in enumerate(logits):
            draft = drafts[i] if i < len(drafts) else None
            q = qs[i] if qs is not None and draft is not None else None
            if not self._emit_guarded(run, row, draft, q):
                break
            kept += 1
            if run.req.done.is_set():
                break
        self.draft_tokens += len(drafts)
        self.accepted_tokens += kept
        if not run.req.done.is_set():
            self.scheduler.computed(seq, 1 + kept)  # the last token and the kept drafts

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.scheduler.running if s.owner.req.cancelled]:
            self._finish(seq.owner, "cancelled")
        with self.lock:
            gone = [s for s in self.scheduler.waiting if s.owner.req.cancelled]
            for seq in gone:
                self.scheduler.waiting.remove(seq)
        for seq in gone:
            if seq.owner.started:  # preempted while streaming: its held-back text still goes out
                self._finish(seq.owner, "cancelled")
            else:
                self._end(seq.owner.req, "cancelled", [])

    def _begin(self, run: _Running) -> bool:
        """Set up a request's token step when it is first scheduled; a failure (its constraint, say) ends
        it alone."""
        if run.started:
            return True
        try:
            run.begin(self.decode, self.max_seq_len, self.constraints)
            return True
        except Exception as exc:
            log.exception("mai engine: request %d could not start", run.req.id)
            self.scheduler.finish(run.seq)
            self._end(run.req, "error", [], f"{type(exc).__name__}: {exc}")
            return False

    @staticmethod
    def _batch(chunks: list[tuple[SeqState, int]]) -> StepBatch:
        """The flat batch of a step (one-token rows come first in ``chunks``)."""
        batch = StepBatch([], [], [], [], [])
        for seq, n in chunks:
            start = seq.computed
            batch.tokens += seq.tokens[start : start + n] + seq.drafts
            batch.adapters += [seq.owner.req.adapter] * (len(batch.tokens) - len(batch.adapters))
            batch.positions += range(start, start + n)
            if n == 1:
                batch.rows.append((seq.blocks, start + 1))
            else:
                batch.chunks.append((seq.blocks, start, n))
            if seq.drafts:  # logits after the last token and after each draft
                batch.logits_at += range(len(batch.tokens) - n, len(batch.tokens))
            elif start + n == len(seq.tokens):
                batch.logits_at.append(len(batch.tokens) - 1)
        return batch

    # --- the per-request token step --------------------------------------------------------------
    def _emit_guarded(self, run: _Running, logits: torch.Tensor, draft: int | None = None,
                      q: torch.Tensor | None = None) -> bool:
        """:meth:`_emit`, with any failure ending this request only (with an error event)."""
        try:
            return self._emit(run, logits, draft, q)
        except Exception as exc:
            log.exception("mai engine: request %d failed", run.req.id)
            if not run.req.done.is_set():
                self.scheduler.finish(run.seq)
                self._end(run.req, "error", run.pending, f"{type(exc).__name__}: {exc}")
            return False

    def _emit(self, run: _Running, logits: torch.Tensor, draft: int | None = None,
              q: torch.Tensor | None = None) -> bool:
        """Choose the next token of ``run`` from its logits and report the text it adds. With a
        ``draft`` (drawn from ``q``) the choice is speculative verification; True when the token is the
        draft (the request may have ended with it)."""
        req, p = run.req, run.req.params
        raw = logits
        logits = apply_penalties(logits, torch.tensor(run.seq.tokens), p)
        if run.constraint is not None:
            logits = run.constraint.mask(logits, self.stop_ids)
        if draft is None:
            token, kept = sample_row(logits, p, run.gen), False
        else:
            token, kept = verify(logits, p, draft, q, run.gen)
        if req.first_token is None:
            req.first_token = time.perf_counter()
        if p.logprobs and self.token_texts is not None:
            run.pending.append(self._logprob(raw, token, p.top_logprobs))
        if token in self.stop_ids:
            self._finish(run, "stop")
            return kept
        run.seq.tokens.append(token)
        if run.constraint is not None:
            run.constraint.advance(token)
        delta = run.stream.push(token)
        req.token_ids, req.text = run.stream.token_ids, run.stream.text
        if run.stream.stopped:
            self._finish(run, "stop", delta)
        elif len(req.token_ids) >= run.budget:
            self._finish(run, "length", delta)
        elif delta or run.pending:
            self._send(run, Event(delta, run.pending))
            run.pending = []
        return kept

    def _logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        logp = torch.log_softmax(logits, dim=-1)
        texts = self.token_texts or []
        alts = []
        if top:
            values, ids = logp.topk(top)
            alts = [(texts[i], float(v)) for v, i in zip(values.tolist(), ids.tolist(), strict=True)]
        return TokenLogprob(texts[token], float(logp[token]), alts)

    def _send(self, run: _Running, event: Event) -> None:
        if run.req.on_event is not None:
            run.req.on_event(run.req, event)

    def _finish(self, run: _Running, reason: str, delta: str = "") -> None:
        req = run.req
        if run.constraint is not None and reason in ("stop", "length") and not run.constraint.complete:
            # the answer must parse: close what is open (with a stop string, on what was kept)
            closing = run.constraint.closing()
            run.stream.text += closing
        if run.started:
            req.text = run.stream.text
            delta += run.stream.flush()
        self.scheduler.finish(run.seq)
        self._end(req, reason, run.pending, None, delta)

    def _end(self, req: Request, reason: str, pending: list[TokenLogprob], error: str | None = None,
             delta: str = "") -> None:
        """Mark ``req`` finished and send its last event. A failing callback is logged, not raised: the
        request is over either way and the engine must go on."""
        req.finish_reason, req.error, req.finished = reason, error, time.perf_counter()
        if self.speculative is not None:
            self.speculative.forget(req.id)
        try:
            if req.on_event is not None:
                req.on_event(req, Event(delta, pending, reason, error))
        except Exception:
            log.exception("mai engine: the final event of request %d could not be delivered", req.id)
        req.done.set()
