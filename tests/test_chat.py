"""`sparsecut chat`: one-shot and piped answers, the scripted interactive loop, Ctrl-C, 4-/8-bit on CPU.

Everything runs on the tiny preset (random weights): answers are gibberish, so tests
compare answers with each other and check the conversation's structure, not its words.
"""

import copy
import json
import os
import signal
import sys

import bitsandbytes as bnb
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from sparsecut_cli import app as app_module
from sparsecut_cli.app import app
from sparsecut_cli.chat import chat_loop
from sparsecut_core.presets.build import build_from_preset
from sparsecut_core.model.images import load_image
from sparsecut_core.inference.chat import Chat, ChatStreamer, Sampling, StopFlag
from sparsecut_core.model.modeling import SparseCutForConditionalGeneration
from sparsecut_core.presets.preset import load_preset
from sparsecut_core.model.processing import SparseCutProcessor
from sparsecut_core.inference.quantization import load_quantized, quantized_module_names, resolve_device, restrict_cpu_packing

runner = CliRunner()
SHORT = Sampling(max_new_tokens=6)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """The tiny preset built and saved by `sparsecut build` (seed 0)."""
    out = tmp_path_factory.mktemp("tiny")
    result = runner.invoke(app, ["build", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "red.png")
    Image.new("RGB", (30, 40), (30, 30, 200)).save(folder / "blue.jpg")
    return folder


def tiny_chat(image) -> Chat:
    model, processor = build_from_preset(load_preset("tiny"), seed=0)
    return Chat(model.eval(), processor, image)


def scripted(lines):
    """An input()-like reader over `lines` that remembers which prompts it was shown."""
    remaining = list(lines)

    def read(prompt):
        if not remaining:
            raise EOFError
        line = remaining.pop(0)
        if isinstance(line, BaseException):
            raise line
        return line

    read.remaining = remaining
    return read


def run_main(monkeypatch, capsys, *args):
    """Run the installed `sparsecut` entry point in-process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["sparsecut", *args])
    with pytest.raises(SystemExit) as exit_info:
        app_module.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# --- one-shot answers through the command ---

def test_prompt_answers_once_with_the_streamed_greedy_answer(images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--preset", "tiny", "--prompt", "what shape?",
                                 "--max-new-tokens", "6"])
    assert result.exit_code == 0, result.output
    expected = tiny_chat(images / "red.png").ask("what shape?", SHORT)
    assert result.stdout.strip() == expected and expected
    assert "user>" not in result.stdout


def test_piped_stdin_is_the_question_for_a_saved_model(saved_model, images):
    result = runner.invoke(app, ["chat", str(images / "blue.jpg"), "--model", str(saved_model),
                                 "--max-new-tokens", "5"], input="what colour is it?\n")
    assert result.exit_code == 0, result.output
    expected = tiny_chat(images / "blue.jpg").ask("what colour is it?", Sampling(max_new_tokens=5))
    assert result.stdout.strip() == expected


def test_empty_piped_stdin_is_an_error_not_a_hang(images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--preset", "tiny"], input="")
    assert result.exit_code == 1 and "empty" in str(result.exception)


def test_verbose_reports_peak_memory_on_stderr(images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--preset", "tiny", "--prompt", "hi",
                                 "--max-new-tokens", "2", "--verbose"])
    assert result.exit_code == 0, result.output
    assert "peak memory:" in result.stderr and "MiB" in result.stderr
    assert "peak memory" not in result.stdout  # stdout stays the answer alone


@pytest.mark.parametrize("name", ["nope.png", "corrupt.jpg"])
def test_bad_image_is_a_one_line_error_and_exit_1(monkeypatch, capsys, tmp_path, name):
    path = tmp_path / name
    if name == "corrupt.jpg":
        path.write_bytes(b"\xff\xd8 not really a jpeg")
    code, out, err = run_main(monkeypatch, capsys, "chat", str(path), "--preset", "tiny", "--prompt", "hi")
    assert code == 1 and out == ""
    assert err.strip().count("\n") == 0 and "cannot read image" in err and name in err
    assert "Traceback" not in err


def test_cuda_without_a_gpu_is_a_one_line_error(monkeypatch, capsys, images):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = run_main(monkeypatch, capsys, "chat", str(images / "red.png"), "--device", "cuda", "--prompt", "hi")
    assert code == 1 and err.strip().count("\n") == 0 and "CUDA is not available" in err and "--device cpu" in err


def test_both_quantization_flags_are_refused(images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--load-4bit", "--load-8bit", "--prompt", "hi"])
    assert result.exit_code == 1 and "one of --load-4bit and --load-8bit" in str(result.exception)


# --- the interactive loop, driven by scripted input ---

def test_loop_streams_answers_and_keeps_a_multi_turn_history(images, tmp_path):
    session, shown = tiny_chat(images / "red.png"), []
    read = scripted(["what shape?", "", "and the colour?", f"/save {tmp_path / 'chat.json'}", "/exit", "never read"])
    chat_loop(session, read, shown.append, SHORT)

    assert read.remaining == ["never read"]  # /exit ends the session
    record = json.loads((tmp_path / "chat.json").read_text())
    assert record["image"] == str(images / "red.png") and record["template"] == "vicuna_v1"
    turns = record["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt", "human", "gpt"]
    assert turns[0]["value"] == "<image>\nwhat shape?" and turns[2]["value"] == "and the colour?"
    # the answers were shown word by word, and what was shown is what the history holds
    text = "".join(shown)
    assert text.startswith(f"{turns[1]['value']}\n{turns[3]['value']}\n")
    assert len(shown) > 4
    # the next question is asked with the whole history in the model's template (vicuna_v1)
    a1, a2 = turns[1]["value"], turns[3]["value"]
    assert session.prompt("next").endswith(
        f"USER: <image>\nwhat shape? ASSISTANT: {a1}</s>USER: and the colour? ASSISTANT: {a2}</s>USER: next ASSISTANT:")


def test_reset_forgets_the_history_but_keeps_the_image(images, tmp_path):
    session = tiny_chat(images / "red.png")
    chat_loop(session, iter(["first question", "/reset", "second question", f"/save {tmp_path / 'c.json'}"]),
              lambda text: None, SHORT)
    turns = json.loads((tmp_path / "c.json").read_text())["conversations"]
    assert [t["value"] for t in turns[::2]] == ["<image>\nsecond question"]
    assert len(turns) == 2


def test_image_command_switches_the_image_and_clears_the_history(images, tmp_path):
    session, shown = tiny_chat(images / "red.png"), []
    script = ["what is it?", f"/image {images / 'blue.jpg'}", "and now?", f"/save {tmp_path / 'c.json'}"]
    chat_loop(session, iter(script), shown.append, SHORT)
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["image"] == str(images / "blue.jpg")
    assert [t["value"] for t in record["conversations"][::2]] == ["<image>\nand now?"]
    assert session.image.tobytes() == load_image(images / "blue.jpg").tobytes()
    # the answer about the new image is the one a fresh chat about it gives
    assert record["conversations"][1]["value"] == tiny_chat(images / "blue.jpg").ask("and now?", SHORT)


def test_bad_commands_are_one_line_and_the_session_goes_on(images, tmp_path):
    session, shown = tiny_chat(images / "red.png"), []
    script = [f"/image {tmp_path / 'missing.png'}", "/image", f"/save {tmp_path / 'no' / 'dir.json'}",
              "/frobnicate", "still here?", "/exit"]
    chat_loop(session, scripted(script), shown.append, SHORT)
    messages = "".join(shown).splitlines()
    assert messages[0].startswith("error: cannot read image") and "missing.png" in messages[0]
    assert messages[1] == "/image needs a path or URL"
    assert messages[2].startswith("error: cannot save") and "does not exist" in messages[2]
    assert messages[3].startswith("unknown command /frobnicate; commands: /image PATH")
    assert session.source == str(images / "red.png")  # the failed /image changed nothing
    assert len(session.turns) == 2  # the question after the errors was answered


def test_save_replaces_the_file_atomically_and_leaves_no_temporary_files(images, tmp_path):
    target = tmp_path / "chat.json"
    target.write_text("old content")
    session = tiny_chat(images / "red.png")
    chat_loop(session, iter(["hello", f"/save {target}"]), lambda text: None, SHORT)
    assert json.loads(target.read_text())["conversations"][0]["value"] == "<image>\nhello"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chat.json"]


def test_ctrl_c_during_an_answer_stops_that_answer_not_the_session(images):
    session, shown, raised = tiny_chat(images / "red.png"), [], []
    handler_before = signal.getsignal(signal.SIGINT)

    def write(text):
        shown.append(text)
        if len(session.turns) == 0 and len(shown) == 1:  # first word of the first answer: press Ctrl-C
            try:
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(100):  # the handler runs at the next bytecode boundary
                    pass
            except KeyboardInterrupt:
                raised.append(True)
                raise

    chat_loop(session, iter(["describe it", "and again?"]), write, Sampling(max_new_tokens=30))
    assert not raised  # the signal raised the stop flag, it did not unwind generate()
    first, second = session.turns[1].text, session.turns[3].text
    tokens = [len(session.processor.tokenizer(text, add_special_tokens=False).input_ids) for text in (first, second)]
    assert tokens[0] < 30 <= tokens[1]  # the first answer ended early, the second did not
    assert "[answer stopped]\n" in shown
    assert signal.getsignal(signal.SIGINT) is handler_before


def test_keyboard_interrupt_from_the_streamer_keeps_the_shown_part(images):
    session, shown = tiny_chat(images / "red.png"), []

    def write(text):
        shown.append(text)
        if len(shown) == 3:
            raise KeyboardInterrupt

    chat_loop(session, iter(["describe it", "next?"]), write, Sampling(max_new_tokens=20))
    stopped = shown.index("[answer stopped]\n")
    assert "".join(shown[:stopped]).strip() == session.turns[1].text  # the partial answer is what was shown
    assert len(session.turns[1].text.split()) < 20
    assert len(session.turns) == 4  # the next question was still answered


def test_ctrl_c_at_the_prompt_does_not_end_the_session(images):
    session, shown = tiny_chat(images / "red.png"), []
    chat_loop(session, scripted([KeyboardInterrupt(), "hello"]), shown.append, SHORT)
    assert "(/exit or Ctrl-D to quit)" in "".join(shown)
    assert len(session.turns) == 2


def test_stop_flag_ends_generation_at_the_next_token(images):
    session, stop = tiny_chat(images / "red.png"), StopFlag()
    streamer = ChatStreamer(session.processor.tokenizer, on_text=lambda text: stop.request())
    answer = session.ask("describe it", Sampling(max_new_tokens=30), streamer=streamer, stop=stop)
    assert 0 < len(streamer.answer_ids) < 30 and answer == streamer.text()


# --- generation details ---

class FavourToken(torch.nn.Module):
    """An LM head that makes one token overwhelmingly likely, as an untrained model might."""

    def __init__(self, head: torch.nn.Module, token: int):
        super().__init__()
        self.head, self.token = head, token

    def forward(self, hidden):
        logits = self.head(hidden)
        logits[..., self.token] += 1e4
        return logits


def test_the_image_token_is_never_generated(images):
    session = tiny_chat(images / "red.png")
    model, image_token = session.model, session.model.config.image_token_id
    model.language_model.lm_head = FavourToken(model.language_model.lm_head, image_token)
    batch = session.processor(session.prompt("what?"), [session.image])
    plain = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert (plain[0, batch["input_ids"].shape[1]:] == image_token).all()  # the head does favour it

    streamer = ChatStreamer(session.processor.tokenizer, on_text=lambda text: None)
    session.ask("what?", Sampling(max_new_tokens=5), streamer=streamer)
    assert len(streamer.answer_ids) == 5 and image_token not in streamer.answer_ids


# --- quantized loading ---

def test_4bit_on_cpu_quantizes_only_the_llm_and_generates(saved_model, images):
    model = load_quantized(saved_model, "4bit", resolve_device("cpu"))
    names = quantized_module_names(model)
    assert len(names) == 6 * 7  # 6 decoder layers x (q, k, v, o, gate, up, down)
    assert all(n.startswith("language_model.model.layers.") for n in names)
    layer = model.language_model.model.layers[0].layer.self_attn.q_proj
    assert isinstance(layer, bnb.nn.Linear4bit)
    assert layer.weight.quant_type == "nf4" and layer.weight.quant_state.nested  # NF4, double quantization
    assert layer.compute_dtype == torch.bfloat16
    kept = [model.vision_tower, model.adapter, model.language_model.lm_head]
    assert all(p.dtype == torch.float32 for part in kept for p in part.parameters())
    session = Chat(model, SparseCutProcessor.from_pretrained(saved_model), images / "red.png")
    assert session.ask("what shape?", SHORT)


def test_load_4bit_chat_from_a_saved_model_on_cpu(saved_model, images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--model", str(saved_model), "--load-4bit",
                                 "--device", "cpu", "--prompt", "what shape?", "--max-new-tokens", "4", "--verbose"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and "42 LLM linears in 4bit" in result.stderr


def test_load_8bit_chat_with_a_preset_on_cpu(images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--preset", "tiny", "--load-8bit", "--device", "cpu",
                                 "--prompt", "what?", "--max-new-tokens", "3", "--verbose"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and "42 LLM linears in 8bit" in result.stderr
    assert "MatMul8bitLt" not in result.output


def test_a_backend_that_cannot_quantize_is_a_one_line_error_with_the_way_out(monkeypatch, capsys, saved_model, images):
    def no_kernels(*args, **kwargs):
        raise NotImplementedError("int8 matmul has no kernel for this backend\n  more detail")

    monkeypatch.setattr(SparseCutForConditionalGeneration, "from_pretrained", no_kernels)
    code, _, err = run_main(monkeypatch, capsys, "chat", str(images / "red.png"), "--model", str(saved_model),
                            "--load-8bit", "--device", "cpu", "--prompt", "hi")
    assert code == 1 and err.strip().count("\n") == 0
    assert "8bit quantization is not available on cpu: int8 matmul has no kernel" in err
    assert "run without --load-8bit" in err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_4bit_on_cuda_generates_and_reports_cuda_memory(saved_model, images):
    result = runner.invoke(app, ["chat", str(images / "red.png"), "--model", str(saved_model), "--load-4bit",
                                 "--device", "cuda", "--prompt", "what?", "--max-new-tokens", "4", "--verbose"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() and "CUDA max allocated" in result.stderr


def test_4bit_on_cpu_survives_bitsandbytes_avx512_bf16_repacking(saved_model, images):
    """The path bitsandbytes takes on an AVX512-BF16 CPU, forced on any CPU: every 4-bit linear left on
    the repacking path can be repacked (the tiny preset's 96-wide layers could not), the rest are named."""
    from bitsandbytes.functional import _convert_weight_packed_for_cpu

    model = load_quantized(saved_model, "4bit", resolve_device("cpu"))
    layers = dict(model.named_modules())
    for name in quantized_module_names(model):
        layers[name].support_avx512bf16_for_cpu = True  # what bitsandbytes sets where the CPU has AVX512-BF16
    generic = restrict_cpu_packing(model)
    assert "language_model.model.layers.0.layer.self_attn.q_proj" in generic  # [96, 96]: absmax [96, 1] breaks
    assert "language_model.model.layers.0.layer.mlp.down_proj" not in generic  # [96, 192]: tiles
    assert len(quantized_module_names(model)) == 6 * 7  # every LLM linear stays 4-bit
    for name in quantized_module_names(model):
        layer = layers[name]
        if layer.support_avx512bf16_for_cpu:
            state = copy.deepcopy(layer.weight.quant_state)
            _convert_weight_packed_for_cpu(layer.weight.data.clone(), state)  # raised for 96-wide layers
