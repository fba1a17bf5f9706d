"""`tinyembed` on the command line: flags and TINYEMBED_* variables -> ServerConfig, model ids
and aliases, and the offline embed / tokenize / models commands."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, TINY_MODEL
from tinyembed import cli
from tinyembed.server.config import ModelSource, ServerConfig


def config_of(argv: list[str], env: dict | None = None) -> ServerConfig:
    args = cli.build_parser().parse_args(["serve", *argv])
    return cli.server_config(args, environ=env or {})[0]


def test_defaults_come_from_config():
    config = config_of([])
    assert config == ServerConfig()
    assert config.host == "127.0.0.1" and config.port == 8000 and config.api_keys == ()
    assert config.models == (ModelSource("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),)


def test_batching_picks_the_runner():
    from tinyembed.server.app import make_runner
    from tinyembed.scheduler.runner import DirectRunner
    from tinyembed.scheduler import Scheduler

    assert isinstance(make_runner(config_of([])), Scheduler)
    assert isinstance(make_runner(config_of(["--batching", "per-request"])), DirectRunner)


def test_flags_fill_every_section():
    config = config_of(["--port", "9001", "--auto-truncate", "--max-body-bytes", "1000", "--max-inputs", "8",
                        "--request-timeout", "2.5", "--rate-limit-rpm", "60", "--rate-limit-tpm", "6000",
                        "--max-connections", "3", "--idle-timeout", "4", "--max-batch-tokens", "512",
                        "--log-format", "json", "--no-access-log", "--api-key", "sk-one", "--api-key", "sk-two"])
    assert config.port == 9001 and config.auto_truncate and config.max_batch_tokens == 512
    assert config.http.max_body_bytes == 1000 and config.http.max_connections == 3 and config.http.idle_timeout == 4
    assert config.requests.max_inputs == 8 and config.requests.request_timeout == 2.5
    assert config.rate.requests_per_minute == 60 and config.rate.tokens_per_minute == 6000
    assert config.log_format == "json" and not config.access_log
    assert config.api_keys == ("sk-one", "sk-two")
    assert "sk-" not in repr(config)  # keys stay out of the repr (and so out of logs)


def test_environment_variables_and_flags_win_over_them(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("from-file\n")
    env = {"TINYEMBED_PORT": "7000", "TINYEMBED_AUTO_TRUNCATE": "true", "TINYEMBED_API_KEYS": "e1, e2",
           "TINYEMBED_API_KEY_FILE": str(key_file), "TINYEMBED_MODEL": f"tiny={TINY_MODEL},all-MiniLM-L6-v2",
           "TINYEMBED_RATE_LIMIT_TPM": "100", "TINYEMBED_HEADER_TIMEOUT": "1.5"}
    config = config_of([], env)
    assert config.port == 7000 and config.auto_truncate and config.rate.tokens_per_minute == 100
    assert config.api_keys == ("e1", "e2", "from-file") and config.http.header_timeout == 1.5
    assert [m.name for m in config.models] == ["tiny", "all-MiniLM-L6-v2"]
    overridden = config_of(["--port", "7001", "--api-key", "flag", "--model", "x=/m"], env)
    assert overridden.port == 7001 and overridden.api_keys == ("flag", "from-file")
    assert [m.name for m in overridden.models] == ["x"]


def test_model_ids_and_aliases():
    sources = cli.model_sources([f"tiny={TINY_MODEL}", TINY_MODEL, "BAAI/bge-small-en-v1.5"],
                                ["text-embedding-3-small", "e5=BAAI/bge-small-en-v1.5"])
    assert [(s.name, s.aliases) for s in sources] == [
        ("tiny", ("text-embedding-3-small",)), ("tiny-bert-fp32", ()), ("BAAI/bge-small-en-v1.5", ("e5",))]
    with pytest.raises(ValueError, match="used twice"):
        cli.model_sources(["a=/x", "a=/y"], [])
    with pytest.raises(ValueError, match="no model named"):
        cli.model_sources(["a=/x"], ["alias=b"])


@pytest.mark.parametrize("argv", [["--log-format", "xml"], ["--max-inputs", "0"], ["--model", "a=/x", "--model", "a=/y"],
                                  ["--loop", "trio"], ["--batching", "sometimes"]])
def test_bad_settings_exit_2_with_a_message(argv, capsys):
    assert cli.main(["serve", *argv]) == 2
    assert "error" in capsys.readouterr().err


def test_serve_with_a_missing_model_exits_1_and_says_where_it_looked(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinyembed.cli", "serve", "--port", "0", "--model",
                             str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 1
    assert "could not load the models" in result.stderr and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_gpu_dtype_on_cpu_exits_1_with_the_reason():
    result = subprocess.run([sys.executable, "-m", "tinyembed.cli", "serve", "--port", "0", "--model", TINY_MODEL,
                             "--device", "cpu", "--dtype", "float16"], capture_output=True, text=True, cwd=ROOT,
                            timeout=120)
    assert result.returncode == 1 and "needs a GPU" in result.stderr


def test_embed_command_prints_engine_vectors(capsys, tiny):
    assert cli.main(["embed", "--model", TINY_MODEL, "--dimensions", "8", "hello", "world"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["index"] for line in lines] == [0, 1]
    from tinyembed.engine.families.bert import truncate_dimensions

    expected = truncate_dimensions(tiny.embed_texts(["hello", "world"]), 8)
    np.testing.assert_allclose(np.array([line["embedding"] for line in lines], np.float32), expected, atol=1e-7)


def test_embed_reads_stdin_and_reports_overlong_input(tmp_path):
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "tinyembed.cli", "embed", "--model", TINY_MODEL, *extra],
        input="first line\n\n" + "word " * 100 + "\n", capture_output=True, text=True, cwd=ROOT, timeout=120)
    failed = run()
    assert failed.returncode == 1 and "context_length_exceeded" not in failed.stderr and "truncate" in failed.stderr
    ok = run("--truncate")
    assert ok.returncode == 0 and len(ok.stdout.splitlines()) == 2
    assert json.loads(ok.stdout.splitlines()[1])["tokens"] == 64


def test_tokenize_command(capsys):
    assert cli.main(["tokenize", "hello world"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line == {"index": 0, "ids": [101, 7592, 2088, 102], "tokens": ["[CLS]", "hello", "world", "[SEP]"]}


def test_models_command_lists_the_bundled_model(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("all-minilm-l6-v2\tbundled\t") and "not installed" not in out.splitlines()[0]


def test_bench_command_runs_the_suite_from_the_checkout():
    done = subprocess.run([sys.executable, "-m", "tinyembed.cli", "bench", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--peers" in done.stdout and "--quick" in done.stdout
