"""The batched inference engine: one model step serves every running request (continuous batching).

Requests wait in a queue; between steps the engine admits new ones (each prompt is prefilled alone, its
keys/values copied into a row of the shared :class:`RowKVCache`) and retires finished or cancelled ones,
so requests join and leave the running batch at any step. Each request keeps its own sampling
parameters, seeded generator, stop tokens and stop strings. Results arrive through a per-request
callback (called on the engine thread) as :class:`Event`s; the server turns them into HTTP streams.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mai.errors import MaiError
from mai.infer.json_mode import JsonConstraint
from mai.infer.kv_cache import RowKVCache
from mai.infer.sampling import SamplingParams, apply_penalties, sample_row
from mai.infer.textstream import TextStream
from mai.model.transformer import KVCache, Transformer


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
    arrived: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None  # left the queue
    first_token: float | None = None
    finished: float | None = None
    cancelled: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class _Running:
    """Engine-side state of an admitted request."""

    def __init__(self, req: Request, decode: Callable[[list[int]], str], budget: int,
                 vocab: list[str] | None):
        self.req = req
        self.gen = req.params.generator()
        self.history = list(req.prompt_ids)
        self.stream = TextStream(decode, req.params.stop)
        self.budget = budget
        self.json = JsonConstraint(vocab) if req.params.json_object and vocab is not None else None
        self.pending: list[TokenLogprob] = []


class Engine:
    """Continuous batching over one model. Drive it with :meth:`step` or a background :meth:`start`."""

    def __init__(self, model: Transformer, decode: Callable[[list[int]], str], stop_ids: Sequence[int] = (),
                 max_batch: int = 32, max_len: int | None = None, token_texts: list[str] | None = None):
        self.model, self.decode, self.stop_ids = model, decode, set(stop_ids)
        self.max_batch = max_batch
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.token_texts = token_texts  # text of every token id: needed for JSON mode and logprobs
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cache = RowKVCache(model.cfg, self.max_len, self.device, self.dtype)
        self.rows: list[_Running] = []  # row i of the cache belongs to rows[i]
        self.waiting: deque[Request] = deque()
        self.lock = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False

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
            self.waiting.append(req)
            self.lock.notify()
        return req

    def cancel(self, req: Request) -> None:
        """Stop ``req`` at the next step boundary (the client went away)."""
        req.cancelled = True
        with self.lock:
            self.lock.notify()

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

    def shutdown(self) -> None:
        with self.lock:
            self._stop = True
            self.lock.notify()
        if self._thread is not None:
            self._thread.join()

    # --- scheduling ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self._stop and not self.waiting and not self.rows:
                    self.lock.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug must not leave clients waiting forever
                for run in list(self.rows):
                    self._finish(run, "error")
                with self.lock:
                    failed, self.waiting = list(self.waiting), deque()
                for req in failed:
                    self._finish_waiting(req, "error")
                print(f"mai engine: step failed: {exc!r}")

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
                self._finish_waiting(req, "cancelled")
                continue
            self._admit(req)
        if not self.rows:
            return
        tokens = torch.tensor([[r.history[-1]] for r in self.rows], device=self.device)
        logits = self.model(tokens, self.cache, positions=self.cache.positions(1))[:, -1].float()
        for run, row_logits in zip(list(self.rows), logits, strict=True):
            self._emit(run, row_logits)

    def _admit(self, req: Request) -> None:
        req.scheduled = time.perf_counter()
        budget = min(req.params.max_tokens, self.max_len - len(req.prompt_ids))
        run = _Running(req, self.decode, budget, self.token_texts)
        prefill = KVCache(self.model.cfg, 1, len(req.prompt_ids), self.device, self.dtype)
        logits = self.model(torch.tensor([req.prompt_ids], device=self.device), prefill,
                            last_only=True)[0, -1].float()
        self.cache.add_row(prefill)
        self.rows.append(run)
        self._emit(run, logits)

    def _emit(self, run: _Running, logits: torch.Tensor) -> None:
        """Sample the next token of ``run`` from its logits and report the text it adds."""
        req, p = run.req, run.req.params
        raw = logits
        logits = apply_penalties(logits, torch.tensor(run.history), p)
        if run.json is not None:
            logits = run.json.mask(logits, self.stop_ids)
        token = sample_row(logits, p, run.gen)
        if req.first_token is None:
            req.first_token = time.perf_counter()
        if p.logprobs and self.token_texts is not None:
            run.pending.append(self._logprob(raw, token, p.top_logprobs))
        if token in self.stop_ids:
            self._finish(run, "stop")
            return
        run.history.append(token)
        if run.json is not None:
            run.json.advance(token)
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
        if run.json is not None and reason in ("stop", "length") and not run.json.complete:
            # the answer must parse: close what is open (with a stop string, on what was kept)
            closing = run.json.closing()
            run.stream.text += closing
        req.text = run.stream.text
        delta += run.stream.flush()
        row = self.rows.index(run)
        moved = self.cache.remove_row(row)
        if moved is not None:
            self.rows[row] = self.rows[moved]
        self.rows.pop()
        req.finish_reason, req.finished = reason, time.perf_counter()
        self._send(run, Event(delta, run.pending, reason))
        req.done.set()

    def _finish_waiting(self, req: Request, reason: str) -> None:
        req.finish_reason, req.finished = reason, time.perf_counter()
        if req.on_event is not None:
            req.on_event(req, Event("", [], reason))
        req.done.set()
