"""Models by name (hub.py): a cache laid out as huggingface_hub lays it, made here with a tiny model,
read with HF_HUB_OFFLINE=1. No test touches the network."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import char_model_dir, run_cli

from simple_llm import GPT, GPTConfig, load_model
from simple_llm.hub import HubError, model_directory

pytest.importorskip("huggingface_hub")

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_model(cache: Path, repo: str, seed: int) -> Path:
    """A model in `cache` where huggingface_hub keeps repo's main revision: models--OWNER--NAME, with
    refs/main naming a snapshot folder that holds the files."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(COMMIT)
    config = dict(n_ctx=16, n_embd=16, n_head=2, n_layer=1 + seed)
    return char_model_dir(folder / "snapshots" / COMMIT, "Hello world! abcdefgh", seed=seed, **config)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hub cache holding gpt2 and someone/tiny-gpt2, used by this process and its children."""
    cache = tmp_path / "hub"
    cached_model(cache, "gpt2", 0)
    cached_model(cache, "someone/tiny-gpt2", 1)
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from huggingface_hub import constants  # read the variables when first imported (transformers may have)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return env


def test_a_name_is_read_from_the_hub_cache(hub):
    for name, layers in (("gpt2", 1), ("someone/tiny-gpt2", 2)):
        directory = model_directory(name)
        assert directory.name == COMMIT and directory.parent.parent.name == f"models--{name.replace('/', '--')}"
        model, tok = load_model(name)
        assert model.config.n_layer == layers and tok.kind == "char"
    proc = run_cli("generate", "--model", "gpt2", "--prompt", "Hello", "--max-new-tokens", "5", env=hub)
    assert proc.returncode == 0 and proc.stdout.startswith("Hello"), proc.stderr


def test_a_path_that_exists_wins_over_a_name(hub, tmp_path):
    GPT(GPTConfig(vocab_size=20, n_ctx=16, n_embd=16, n_head=2, n_layer=3)).save_pretrained(tmp_path / "gpt2")
    assert model_directory("gpt2") == Path("gpt2")
    assert GPT.from_pretrained(model_directory("gpt2")).config.n_layer == 3


def test_train_init_from_a_name(hub, tmp_path):
    data = tmp_path / "text.txt"
    data.write_text("Hello world! abcdefgh " * 40)
    proc = run_cli("train", "--data", data, "--out", tmp_path / "run", "--init-from", "gpt2", "--max-steps", "2",
                   "--block-size", "8", "--eval-interval", "1", "--no-progress", env=hub)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert GPT.from_pretrained(tmp_path / "run").config.n_layer == 1


def test_lora_adapters_name_their_base_by_name(hub, tmp_path):
    """--init-from NAME --lora-rank: adapter_config.json names the base as PEFT looks for it (the
    name, not the cache's path), and the adapters load onto it from the cache."""
    import json

    data = tmp_path / "text.txt"
    data.write_text("Hello world! abcdefgh " * 40)
    proc = run_cli("train", "--data", data, "--out", tmp_path / "run", "--init-from", "someone/tiny-gpt2",
                   "--lora-rank", "2", "--max-steps", "2", "--block-size", "8", "--eval-interval", "1",
                   "--no-progress", env=hub)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "run" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "someone/tiny-gpt2"
    model = GPT.from_pretrained(tmp_path / "run")
    assert model.config.n_layer == 2 and model.lora.rank == 2
    proc = run_cli("generate", "--model", tmp_path / "run", "--prompt", "Hello", "--max-new-tokens", "5", env=hub)
    assert proc.returncode == 0 and proc.stdout.startswith("Hello"), proc.stderr


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("gpt2-xl", "not in the Hugging Face cache"),  # a name, not cached, offline
        ("someone/absent", "not in the Hugging Face cache"),
        ("./nope", "not a directory, nor a model name"),
        ("a/b/c", "not a directory, nor a model name"),
    ],
)
def test_a_model_that_cannot_be_found_is_one_line(hub, name, fragment):
    with pytest.raises(HubError, match=fragment):
        model_directory(name)
    for command in (["generate", "--prompt", "Hi"], ["eval", "--data", "x"], ["inspect", "--trace", "--prompt", "a"]):
        proc = run_cli(command[0], "--model", name, *command[1:], env=hub)
        assert proc.returncode == 2 and fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_without_the_extra_a_name_says_what_to_install(hub, tmp_path):
    blocker = tmp_path / "blocked"
    (blocker / "huggingface_hub").mkdir(parents=True)
    (blocker / "huggingface_hub" / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**hub, "PYTHONPATH": str(blocker)}
    proc = run_cli("generate", "--model", "gpt2", "--prompt", "Hi", env=env)
    assert proc.returncode == 2 and "pip install 'simple_llm[hub]'" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
