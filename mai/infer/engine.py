"""The batched inference engine: one model step serves every running request (continuous batching).

Requests wait in a queue; between steps the engine admits new ones (each prompt is prefilled alone, its
keys/values copied into a row of the shared :class:`RowKVCache`) and retires finished or cancelled ones,
so requests join and leave the running batch at any step. Each request keeps its own sampling
parameters, seeded generator, stop tokens and stop strings. Results arrive through a per-request
callback (called on the engine thread) as :class:`Event`s; the server turns them into HTTP streams.

Faults stay as small as they can be: an exception while computing one request's token (penalties,
constraint, sampling, stop strings, detokenising) or its prefill ends that request alone with
``finish_reason="error"``; a failure of the shared decode step ends the requests of that step, the cache
is rebuilt and a one-token probe tells whether the model can still step (:attr:`Engine.state`). Requests
still waiting are untouched. Should the engine thread end for any reason, every outstanding request is
finished, so no caller waits forever.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mai.errors import MaiError
from mai.infer.constraint import Constraint, ConstraintFactory, json_mode_factory
from mai.infer.kv_cache import RowKVCache
from mai.infer.sampling import SamplingParams, apply_penalties, sample_row
from mai.infer.textstream import TextStream
from mai.model.transformer import KVCache, Transformer

log = logging.getLogger("mai.engine")


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


@dataclass(eq=False)
class Request:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[Request, Event], None] | None = None
    id: int = 0
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
    """Engine-side state of an admitted request."""

    def __init__(self, req: Request, decode: Callable[[list[int]], str], budget: int,
                 constraint: Constraint | None):
        self.req = req
        self.gen = req.params.generator()
        self.history = list(req.prompt_ids)
        self.stream = TextStream(decode, req.params.stop)
        self.budget = budget
        self.constraint = constraint
        self.pending: list[TokenLogprob] = []


class Engine:
    """Continuous batching over one model. Drive it with :meth:`step` or a background :meth:`start`."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], stop_ids: Sequence[int] = (),
                 max_batch: int = 32, max_len: int | None = None, token_texts: list[str] | None = None,
                 constraints: ConstraintFactory | None = None):
        self.model, self.decode, self.stop_ids = model, decode, set(stop_ids)
        self.max_batch = max_batch
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.token_texts = token_texts  # text of every token id: needed for logprobs (and JSON mode)
        self.constraints = constraints or json_mode_factory(token_texts)  # request → its output constraint
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache = RowKVCache(model.cfg, self.max_len, self.device, self.dtype)
        self.rows: list[_Running] = []  # row i of the cache belongs to rows[i]
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._admitting: Request | None = None  # popped from the queue, not yet in a row
        self._closed = False  # set once outstanding requests were abandoned: submit() refuses from then on
        self.error: str | None = None  # why the model cannot step (set by a failed probe), else None

    # --- the public API (thread-safe) ------------------------------------------------------------
    def submit(self, prompt_ids: Sequence[int], params: SamplingParams,
               on_event: Callable[[Request, Event], None] | None = None) -> Request:
        if not prompt_ids:
            raise MaiError("the prompt is empty")
        if len(prompt_ids) >= self.max_len:
            raise MaiError(f"the prompt has {len(prompt_ids)} tokens; this model's context is {self.max_len} "
                           "tokens including the answer")
        req = Request(list(prompt_ids), params, on_event, next(self._ids))
        with self.lock:
            if self._closed or self._stop:
                raise EngineStopped("the engine has stopped")
            self.waiting.append(req)
            self.lock.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Stop ``req`` at the next step boundary (the client went away)."""
        req.cancelled = True
        with self.lock:
            self.lock.notify()

    def cancel_all(self) -> None:
        """Cancel every running and waiting request (a drain whose grace period ran out)."""
        with self.lock:
            for req in [r.req for r in self.rows] + list(self.waiting):
                req.cancelled = True
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
        return len(self.rows)

    @property
    def n_waiting(self) -> int:
        return len(self.waiting)

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

    # --- scheduling ------------------------------------------------------------------------------
    def _loop(self) -> None:
        reason, error = "cancelled", None
        try:
            while self._wait_for_work():
                try:
                    self.step()
                except Exception as exc:  # a bug in the bookkeeping: fail this step's requests only
                    log.exception("mai engine: step failed")
                    self._recover(f"{type(exc).__name__}: {exc}")
        except BaseException as exc:  # the thread itself dies (logged, not re-raised): nobody may wait for it
            reason, error = "error", f"the engine stopped: {type(exc).__name__}: {exc}"
            log.exception("mai engine: thread died")
        finally:
            self._abandon(reason, error)

    def _wait_for_work(self) -> bool:
        """Block until there is something to do (False: stop). A failing engine re-probes the model
        every second while idle, so that its state recovers without a request having to fail first."""
        with self.lock:
            while not self._stop and not self.waiting and not self.rows:
                if self.error is None:
                    self.lock.wait()
                elif not self.lock.wait(1.0):
                    self._probe()
            return not self._stop

    def _abandon(self, reason: str, error: str | None) -> None:
        """Finish every request the engine still holds (it is stopping or its thread died)."""
        for run in list(self.rows):
            self._end(run.req, reason, run.pending, error)
        self.rows = []
        with self.lock:
            self._closed = True
            left, self.waiting = list(self.waiting), deque()
        if self._admitting is not None and not self._admitting.done.is_set():
            left.append(self._admitting)
        for req in left:
            self._end(req, reason, [], error)

    def _recover(self, error: str) -> None:
        """After a failed shared step: end the step's requests, rebuild the cache, probe the model."""
        for run in self.rows:
            self._end(run.req, "error", run.pending, error)
        self.rows = []
        self.cache = RowKVCache(self.model.cfg, self.max_len, self.device, self.dtype)
        self._probe()

    @torch.inference_mode()
    def _probe(self) -> None:
        """One token through the model: sets :attr:`error` to why it cannot step, or clears it."""
        try:
            self.model(torch.zeros(1, 1, dtype=torch.long, device=self.device),
                       KVCache(self.model.cfg, 1, 1, self.device, self.dtype), last_only=True)
            self.error = None
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self.error:  # once per change, not at every idle re-probe
                log.error("mai engine: the model cannot step: %s", error)
            self.error = error

    @torch.inference_mode()
    def step(self) -> None:
        """Retire cancelled requests, admit waiting ones (prefill), then one decode step for all."""
        for run in [r for r in self.rows if r.req.cancelled]:
            self._finish(run, "cancelled")
        while len(self.rows) < self.max_batch:
            with self.lock:
                if not self.waiting:
                    break
                req = self.waiting.popleft()
            if req.cancelled:
                self._end(req, "cancelled", [])
                continue
            self._admitting = req
            self._admit(req)
            self._admitting = None
        if not self.rows:
            return
        tokens = torch.tensor([[r.history[-1]] for r in self.rows], device=self.device)
        try:
            logits = self.model(tokens, self.cache, positions=self.cache.positions(1))[:, -1].float()
        except Exception as exc:
            log.exception("mai engine: the decode step failed")
            self._recover(f"{type(exc).__name__}: {exc}")
            return
        self.error = None
        for run, row_logits in zip(list(self.rows), logits, strict=True):
            self._emit_guarded(run, row_logits)

    def _admit(self, req: Request) -> None:
        """Prefill ``req`` into a new row; a failure here ends ``req`` alone."""
        req.scheduled = time.perf_counter()
        try:
            budget = min(req.params.max_tokens, self.max_len - len(req.prompt_ids))
            run = _Running(req, self.decode, budget, self.constraints(req.params))
            prefill = KVCache(self.model.cfg, 1, len(req.prompt_ids), self.device, self.dtype)
            logits = self.model(torch.tensor([req.prompt_ids], device=self.device), prefill,
                                last_only=True)[0, -1].float()
            self.cache.add_row(prefill)
        except Exception as exc:
            log.exception("mai engine: request %d failed in prefill", req.id)
            self._end(req, "error", [], f"{type(exc).__name__}: {exc}")
            self._probe()  # the request's own fault, or can the model not step at all?
            return
        self.rows.append(run)
        self._emit_guarded(run, logits)

    def _emit_guarded(self, run: _Running, logits: torch.Tensor) -> None:
        """:meth:`_emit`, with any failure ending this request only (with an error event)."""
        try:
            self._emit(run, logits)
        except Exception as exc:
            log.exception("mai engine: request %d failed", run.req.id)
            if not run.req.done.is_set():
                self._retire(run)
                self._end(run.req, "error", run.pending, f"{type(exc).__name__}: {exc}")

    def _emit(self, run: _Running, logits: torch.Tensor) -> None:
        """Sample the next token of ``run`` from its logits and report the text it adds."""
        req, p = run.req, run.req.params
        raw = logits
        logits = apply_penalties(logits, torch.tensor(run.history), p)
        if run.constraint is not None:
            logits = run.constraint.mask(logits, self.stop_ids)
        token = sample_row(logits, p, run.gen)
        if req.first_token is None:
            req.first_token = time.perf_counter()
        if p.logprobs and self.token_texts is not None:
            run.pending.append(self._logprob(raw, token, p.top_logprobs))
        if token in self.stop_ids:
            self._finish(run, "stop")
            return
        run.history.append(token)
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
        req.text = run.stream.text
        delta += run.stream.flush()
        self._retire(run)
        self._end(req, reason, run.pending, None, delta)

    def _retire(self, run: _Running) -> None:
        """Free ``run``'s cache row (the last row moves into it)."""
        row = self.rows.index(run)
        moved = self.cache.remove_row(row)
        if moved is not None:
            self.rows[row] = self.rows[moved]
        self.rows.pop()

    def _end(self, req: Request, reason: str, pending: list[TokenLogprob], error: str | None = None,
             delta: str = "") -> None:
        """Mark ``req`` finished and send its last event. A failing callback is logged, not raised: the
        request is over either way and the engine must go on."""
        req.finish_reason, req.error, req.finished = reason, error, time.perf_counter()
        try:
            if req.on_event is not None:
                req.on_event(req, Event(delta, pending, reason, error))
        except Exception:
            log.exception("mai engine: the final event of request %d could not be delivered", req.id)
        req.done.set()
