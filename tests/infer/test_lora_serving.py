"""LoRA adapters served un-merged (mai.infer.lora_serving) against the same adapters merged into copies of
the base: the logits of one step that mixes the base and two adapters, the engine's greedy outputs (with
prefix caching, chunked prefill and speculative decoding), and the checks on a wrong adapter."""

import copy
import json
import threading

import pytest
import torch

from mai.errors import MaiError
from mai.infer.compiled_decode import CompiledDecoder
from mai.infer.engine import Engine
from mai.infer.lora_serving import AdapterBank
from mai.infer.runner import ModelRunner, StepBatch
from mai.infer.sampling import SamplingParams
from mai.infer.speculative import make_proposer
from mai.post.lora import add_lora, merge_lora, save_adapter
from tests.infer.test_engine_paged import decode, tiny_model

GREEDY = SamplingParams(max_tokens=10, temperature=0)


def make_adapter(base, out, seed, rank=4, targets=("wq", "wv", "w2")):
    """An adapter folder with random nonzero A and B on a copy of ``base``, and that copy merged."""
    model = copy.deepcopy(base)
    add_lora(model, rank, targets=targets)
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.3
    save_adapter(model, out, "tiny-base")
    merge_lora(model)
    return out, model.eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base served with two adapters, its bank, [base alone, adapter 1 merged, adapter 2 merged])."""
    root = tmp_path_factory.mktemp("adapters")
    base = tiny_model(max_seq_len=128)
    path1, merged1 = make_adapter(base, root / "a1", 1)
    path2, merged2 = make_adapter(base, root / "a2", 2, rank=2, targets=("wk", "wo", "w1", "w3"))
    reference = copy.deepcopy(base)
    bank = AdapterBank(base)
    assert (bank.add("one", path1), bank.add("two", path2)) == (1, 2)
    return base, bank, [reference, merged1, merged2]


def test_a_mixed_step_gives_each_row_its_merged_models_logits(served):
    """One step: a decode row of the base, a decode row of adapter 2 and a two-token prefill chunk of
    adapter 1 — the logits of each equal its own merged model's."""
    base, bank, merged = served
    runner = ModelRunner(base, bank)
    cache = runner.make_cache(8, 16)
    prompts = [[3, 9, 4, 1, 7], [5, 2, 8, 8, 1, 6, 0, 3, 2], [11, 12, 13]]
    fed = [len(prompts[0]) - 1, len(prompts[1]) - 2, len(prompts[2]) - 1]  # computed before the step
    for adapter, (prompt, k) in enumerate(zip(prompts, fed, strict=True)):  # adapter a's prompt in block a+1
        runner.run(cache, StepBatch(prompt[:k], list(range(k)), [], [([adapter + 1], 0, k)], [k - 1],
                                    [adapter] * k))
    p0, p1, p2 = prompts
    step = StepBatch([p0[-1], p2[-1], *p1[-2:]], [len(p0) - 1, len(p2) - 1, len(p1) - 2, len(p1) - 1],
                     [([1], len(p0)), ([3], len(p2))], [([2], len(p1) - 2, 2)], [0, 1, 3], [0, 2, 1, 1])
    got = runner.run(cache, step)
    for row, adapter in zip(got, (0, 2, 1), strict=True):
        want = merged[adapter](torch.tensor([prompts[adapter]]))[0, -1]
        torch.testing.assert_close(row, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got[2], ModelRunner(merged[0]).model(torch.tensor([p1]))[0, -1], atol=1e-3)
    assert bank.active() == []  # nothing stays active after the step


@pytest.mark.parametrize("speculative", [None, "ngram"])
def test_engine_outputs_equal_the_merged_models_and_share_steps(served, speculative):
    base, bank, merged = served
    prompts = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [7, 7, 3, 1, 2]]
    want = {(p, a): Engine(merged[a], decode, max_batch=1).generate(prompts[p], GREEDY).token_ids
            for p in range(2) for a in range(3)}
    assert len({tuple(v) for k, v in want.items() if k[0] == 0}) == 3, "the adapters change the answer"
    engine = Engine(base, decode, max_batch=8, max_num_batched_tokens=24, adapters=bank,
                    speculative=make_proposer(speculative) if speculative else None)
    reqs = {(p, a): engine.submit(prompts[p], GREEDY, adapter=a) for p in range(2) for a in range(3)}
    while not all(r.done.is_set() for r in reqs.values()):
        engine.step()
    assert {k: r.token_ids for k, r in reqs.items()} == want
    assert engine.stats().mixed_adapter_steps > 0


def test_the_prefix_cache_never_hands_one_adapters_blocks_to_another(served):
    """The same 40-token prompt for the base, then adapter 1, then the base again on one engine: each
    answer is its own model's; the second base request reuses the first's blocks, adapter 1 does not."""
    base, bank, merged = served
    prompt = [(i * 7) % 50 for i in range(40)]
    engine = Engine(base, decode, max_batch=4, adapters=bank)
    first = engine.generate(prompt, GREEDY).token_ids
    hits = engine.blocks.hit_tokens
    adapted = engine.submit(prompt, GREEDY, adapter=1)
    while not adapted.done.is_set():
        engine.step()
    assert engine.blocks.hit_tokens == hits, "adapter 1 reused the base's blocks"
    again = engine.generate(prompt, GREEDY).token_ids
    assert engine.blocks.hit_tokens == hits + 32
    assert first == again == Engine(merged[0], decode).generate(prompt, GREEDY).token_ids
    assert adapted.token_ids == Engine(merged[1], decode).generate(prompt, GREEDY).token_ids != first


def test_embedding_threads_see_no_adapter_of_the_engine_thread(served):
    base, bank, merged = served
    x = torch.tensor([[1, 2, 3]])
    with bank.step(1):
        torch.testing.assert_close(base(x), merged[1](x), rtol=1e-4, atol=1e-4)
        seen = []
        t = threading.Thread(target=lambda: seen.append(base(x)))
        t.start()
        t.join()
    torch.testing.assert_close(seen[0], merged[0](x), rtol=1e-5, atol=1e-5)


def test_wrong_adapters_are_errors_that_name_them(served, tmp_path):
    base, _, _ = served
    bank = AdapterBank(base)
    with pytest.raises(MaiError, match="adapter missing: .*not a LoRA adapter folder"):
        bank.add("missing", tmp_path / "nowhere")
    other = tiny_model(max_seq_len=128, seed=5)  # same shapes, other weights
    path, _ = make_adapter(other, tmp_path / "other", 3)
    with pytest.raises(MaiError, match="adapter stranger .*trained on another model than the base"):
        bank.add("stranger", path)
    wide = tiny_model(max_seq_len=128)
    wide.cfg = copy.copy(wide.cfg)
    wide.cfg.vocab_size = 99
    with pytest.raises(MaiError, match="adapter wide .*vocab_size 64.*vocab_size 99"):
        AdapterBank(wide).add("wide", make_adapter(tiny_model(max_seq_len=128), tmp_path / "a", 1)[0])
    meta = json.loads((tmp_path / "a" / "adapter.json").read_text())
    (tmp_path / "a" / "adapter.json").write_text(json.dumps({**meta, "rank": 8}))
    with pytest.raises(MaiError, match="adapter bad-rank: .*is not a rank-8 pair"):
        bank.add("bad-rank", tmp_path / "a")
    assert bank.names == []


def test_compiled_decoding_refuses_adapters(served):
    base, bank, _ = served
    with pytest.raises(MaiError, match="compiled decoding and other runners do not apply adapters"):
        Engine(base, decode, adapters=bank, runner=CompiledDecoder(base))
    with pytest.raises(MaiError, match="LoRA adapter 3 is not one of this engine's 2 adapters"):
        Engine(base, decode, adapters=bank).submit([1, 2], GREEDY, adapter=3)


def test_an_adapter_over_an_int8_base_is_the_merged_model_up_to_the_int8_error(tmp_path):
    """The update adds to the quantized base's output: off the merged float model by about what int8
    costs the base alone, far less than what the adapter changes."""
    from mai.infer.quant import apply_quant

    base = tiny_model(max_seq_len=128)
    path, merged = make_adapter(base, tmp_path / "a", 1)
    quantized = apply_quant(copy.deepcopy(base), "int8")
    bank = AdapterBank(quantized)
    bank.add("one", path)
    x = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.inference_mode():
        with bank.step(1):
            adapted = quantized(x)
        int8_error = (quantized(x) - base(x)).abs().max()
        effect = (merged(x) - base(x)).abs().max()
        assert (adapted - merged(x)).abs().max() < min(2 * int8_error, effect / 10)
