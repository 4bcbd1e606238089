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
