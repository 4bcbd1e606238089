"""Prefill FLOPs: FlopCounterMode on meta models agrees with the closed form; `sparsecut flops` reports them."""

import json
import sys

import pytest
from transformers import MistralConfig, Phi3Config, Qwen2Config
from typer.testing import CliRunner

from sparsecut_cli.app import app
from sparsecut_core.cost.flops import costing_config, count_flops, crop_grid_sweep, formula_flops, method_config, preset_costs
from sparsecut_core.presets.preset import available_presets, load_preset

from conftest import M_V, VOCAB, tiny_config, tiny_text_config

runner = CliRunner()
SPECIAL = dict(vocab_size=VOCAB, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SMALL_LLM = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=4, **SPECIAL)


def _config(name: str):
    """The configs the formula must match, by what they exercise."""
    tiny = load_preset("tiny")
    return {
        "tiny-preset-hi-res": lambda: costing_config(tiny),
        "tiny-preset-low-res": lambda: costing_config(tiny, hi_res=False),
        "llama-low-res": lambda: tiny_config(),
        "llama-hi-res-per-shortcut": lambda: tiny_config(hi_res=True, adapter_sharing="per-shortcut"),
        "llama-adapter-ffn": lambda: tiny_config(hi_res=True, adapter_ffn=True, adapter_num_heads=2),
        "llama-cls-kept": lambda: tiny_config(vision_feature_select="full", crop_grid=[1, 2], hi_res=True),
        "llava-mlp": lambda: tiny_config(pattern="llava", adapter="mlp", num_shortcuts=None),
        "qwen2-gqa": lambda: tiny_config(
            text_config=Qwen2Config(num_attention_heads=8, num_key_value_heads=2, **SMALL_LLM), hi_res=True
        ),
        "phi3": lambda: tiny_config(text_config=Phi3Config(num_attention_heads=4, num_key_value_heads=4, **SMALL_LLM)),
        "mistral-gqa": lambda: tiny_config(
            text_config=MistralConfig(num_attention_heads=4, num_key_value_heads=1, **SMALL_LLM),
            pattern="dense-uniform", num_shortcuts=None,
        ),
    }[name]()


@pytest.mark.parametrize("name", [
    "tiny-preset-hi-res", "tiny-preset-low-res", "llama-low-res", "llama-hi-res-per-shortcut", "llama-adapter-ffn",
    "llama-cls-kept", "llava-mlp", "qwen2-gqa", "phi3", "mistral-gqa",
])
def test_closed_form_matches_flop_counter_within_half_a_percent(name):
    config = _config(name)
    counted, formula = count_flops(config, text_tokens=20), formula_flops(config, text_tokens=20)
    for part in ("vision", "adapter", "llm"):
        assert getattr(counted, part) > 0
        assert getattr(formula, part) == pytest.approx(getattr(counted, part), rel=5e-3), part


def test_closed_form_matches_counter_for_concatenated_views():
    config = tiny_config(pattern="llava", adapter="mlp", num_shortcuts=None)
    counted, formula = count_flops(config, 20, context_views=5), formula_flops(config, 20, context_views=5)
    assert formula.total == pytest.approx(counted.total, rel=5e-3)
    assert counted.vision == 5 * count_flops(config, 20).vision  # every view through the ViT


def test_llm_cost_is_the_decoder_with_full_attention_and_the_head_on_one_position():
    # one Llama layer, D=48, 4 heads of 12, 2 kv heads, I=96, V=100, T = 16 visual + 4 text positions
    config = tiny_config(text_config=tiny_text_config(num_hidden_layers=1), pattern="llava", num_shortcuts=None)
    t, d, kv, inner, vocab = M_V + 4, 48, 2 * 12, 96, VOCAB
    by_hand = (
        2 * t * d * d * 2  # q, o
        + 2 * t * d * kv * 2  # k, v (GQA: 2 kv heads)
        + 2 * 2 * t * t * d  # QK^T, AV over the full T x T scores
        + 2 * t * d * inner * 3  # gate, up, down
        + 2 * d * vocab  # LM head on the last position only
    )
    assert count_flops(config, text_tokens=4).llm == by_hand


def test_json_is_one_object_with_the_documented_schema():
    result = runner.invoke(app, ["flops", "--preset", "tiny", "--hi-res", "--text-tokens", "32", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)  # fails on anything besides one JSON object
    assert payload["preset"] == "tiny" and payload["text_tokens"] == 32
    assert [(r["method"], r["hi_res"]) for r in payload["rows"]] == [
        ("llava", False), ("sparsecut", False), ("llava-concat", True), ("sparsecut", True),
    ]
    keys = {"method", "hi_res", "context_visual_tokens", "params_b", "vision_tflops", "adapter_tflops",
            "llm_tflops", "total_tflops"}
    for row in payload["rows"]:
        assert set(row) == keys
        assert isinstance(row["context_visual_tokens"], int)
        parts = row["vision_tflops"] + row["adapter_tflops"] + row["llm_tflops"]
        assert row["total_tflops"] == pytest.approx(parts) and row["params_b"] > 0


def test_table_reports_the_concatenation_to_sparsecut_ratio():
    result = runner.invoke(app, ["flops", "--preset", "tiny", "--hi-res"])
    assert result.exit_code == 0, result.output
    assert "llava-concat" in result.output and "sparsecut hi-res" in result.output
    assert "llava-concat / sparsecut (hi-res) total FLOPs:" in result.output


def test_concatenation_grows_the_context_fivefold_and_sparsecut_keeps_m_v():
    rows = {(r.method, r.hi_res): r for r in preset_costs("vicuna7b", hi_res=True, text_tokens=64)}
    llava, concat = rows[("llava", False)], rows[("llava-concat", True)]
    low, high = rows[("sparsecut", False)], rows[("sparsecut", True)]
    assert llava.context_visual_tokens == high.context_visual_tokens == 576
    assert concat.context_visual_tokens == 5 * 576
    # linear parts grow with positions (2944 / 640 = 4.6x), attention with their square: a bit over 5x
    assert 4.6 < concat.flops.llm / llava.flops.llm < 5.5
    assert high.flops.llm == low.flops.llm  # hi-res fusion leaves the LLM's cost alone
    assert high.flops.vision == concat.flops.vision == 5 * llava.flops.vision  # both run the ViT on 1 + 4 views
    assert concat.flops.total > 3 * high.flops.total


def test_llava_row_is_llava_whatever_the_preset_design():
    config = method_config(load_preset("vicuna7b"), "llava", hi_res=True)
    assert config.shortcuts == [(23, 1)] and config.adapter == "mlp" and not config.hi_res


def test_pattern_option_changes_only_the_sparsecut_rows():
    default = preset_costs("tiny", text_tokens=8)
    dense = preset_costs("tiny", text_tokens=8, pattern="dense-uniform")  # 6 shortcuts instead of 3
    assert dense[0] == default[0]
    assert dense[1].flops.adapter > default[1].flops.adapter


def test_sweep_keeps_sparsecut_context_while_concatenation_grows():
    sweep = crop_grid_sweep("tiny", text_tokens=16, grids=(1, 2, 3))
    assert [concat.context_visual_tokens for _, concat, _ in sweep] == [2 * 49, 5 * 49, 10 * 49]
    assert {sparse.context_visual_tokens for _, _, sparse in sweep} == {49}


def test_plot_writes_a_png_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "cost.png"
    result = runner.invoke(app, ["flops", "--preset", "tiny", "--plot", str(out), "--json"])
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # the plot's message stays off stdout
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert [p.name for p in out.parent.iterdir()] == ["cost.png"]  # no temp file left behind


def test_plot_without_matplotlib_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result = runner.invoke(app, ["flops", "--preset", "tiny", "--plot", str(tmp_path / "c.png")])
    assert isinstance(result.exception, ValueError)
    assert "pip install 'sparsecut[plot]'" in str(result.exception)
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("name", available_presets())
def test_every_shipped_preset_is_costed_from_its_configs_alone(name):
    llava, sparsecut = preset_costs(name, text_tokens=64)
    assert llava.params > 0 and sparsecut.params > llava.params  # the fusion block adds parameters
    assert llava.flops.vision == sparsecut.flops.vision and llava.flops.llm == sparsecut.flops.llm
    assert sparsecut.flops.adapter > llava.flops.adapter > 0
