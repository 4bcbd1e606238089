"""The CLI end to end on the tiny preset, as `make demo` runs it."""

import subprocess
import sys

from typer.testing import CliRunner

from sparsecut_cli.app import app

runner = CliRunner()


def test_build_then_chat_with_prompt(tmp_path):
    out = tmp_path / "model"
    result = runner.invoke(app, ["build", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").exists() and (out / "processor_config.json").exists()
    result = runner.invoke(app, ["shapes", str(tmp_path / "s.png")])
    assert result.exit_code == 0 and "wrote" in result.output
    result = runner.invoke(app, ["chat", str(tmp_path / "s.png"), "--model", str(out), "--prompt", "what shape?",
                                 "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert result.output.strip()


def test_chat_reads_the_prompt_from_piped_stdin(tmp_path):
    runner.invoke(app, ["shapes", str(tmp_path / "s.png")])
    result = runner.invoke(app, ["chat", str(tmp_path / "s.png"), "--preset", "tiny", "--max-new-tokens", "3"],
                           input="what colour?\n")
    assert result.exit_code == 0, result.output
    assert "user>" not in result.output and result.output.strip()


def test_missing_image_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nope.png"
    proc = subprocess.run([sys.executable, "-m", "sparsecut_cli.app", "chat", str(missing), "--prompt", "hi"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_info_shows_the_paper_pattern_without_downloading():
    result = runner.invoke(app, ["info", "--preset", "vicuna7b"])
    assert result.exit_code == 0
    assert "(23,1), (20,5), (17,9)" in result.output


def test_library_notices_on_import_stay_off_the_terminal_but_real_warnings_do_not():
    import logging

    from sparsecut_cli.app import quiet_library_noise

    quiet_library_noise()
    assert not logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.WARNING)
    assert logging.getLogger("bitsandbytes.backends.cpu.ops").isEnabledFor(logging.ERROR)
    assert logging.getLogger("transformers.modeling_utils").isEnabledFor(logging.WARNING)


def test_finetune_with_skip_leaves_out_and_counts_every_kind_of_bad_record(tmp_path):
    import json

    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")

    def record(rid, image="a.png", question="<image>\nwhat colour is the circle?", answer="red"):
        row = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
        return json.dumps({**row, "image": image} if image else row).encode()

    lines = [record("i1"), record("i2"), record("i3"), record("t1", None, "hello?", "yes"),
             record("t2", None, "hello?", "no"),
             b"{oops",  # malformed JSON
             b'{"id": "\xff"}',  # not UTF-8
             json.dumps({"id": "empty", "conversations": []}).encode(),  # fails validation
             record("gone", "missing.png"),  # image file missing
             record("long", None, "hello " * 300, "yes"),  # no assistant token within --max-length
             record("unreadable", "broken.png")]  # found only when its batch is collated
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines))
    result = runner.invoke(app, ["finetune", "--preset", "tiny", "--data", str(tmp_path / "d.jsonl"), "--images",
                                 str(tmp_path), "--output", str(tmp_path / "run"), "--cpu", "--batch-size", "2",
                                 "--global-batch", "2", "--epochs", "1", "--max-length", "120",
                                 "--on-bad-sample", "skip"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "(5 bad records left out, --on-bad-sample skip)" in said  # when loading
    summary = said[said.index("skipped 6 bad samples:"):]  # at the end
    for reason in ("1 x malformed JSON", "1 x not UTF-8 text", "1 x no conversations", "missing.png is missing",
                   "1 x no assistant tokens left", "1 x unreadable image"):
        assert reason in summary, reason
    assert (tmp_path / "run" / "model" / "config.json").is_file()
