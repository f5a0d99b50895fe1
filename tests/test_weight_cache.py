"""The weight cache: a second load reads the quantized weights back (nothing quantized, no
config read) and runs exactly as the first; a changed source, kernel or code misses; a broken
entry is found, said, deleted and rebuilt; what is not cached loads as before."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fim_lsp import weight_file
from fim_lsp.backend import GenerationOptions
from fim_lsp.engine import choose, linear, load_engine, loading, memory, native, weight_cache
from fim_lsp.engine.choices import BITSANDBYTES, Precision
from fim_lsp.engine.kv_cache import KVCache
from fim_lsp.engine.neox import NeoX

VOCAB = 50280
IDS = [50277, 32488, 535, 50274, 18891, 50278, 1545, 4868, 9, 89, 50279]
OURS = ["c-kernel", "torch-dynamic", "weight-only"]


@pytest.fixture
def cache(tmp_path, monkeypatch, request):
    """The weight cache on, in a folder of this test's (XDG_CACHE_HOME). The C kernels are loaded
    before, from the usual place, so that they are not built again in the empty folder."""
    native.built_library()  # the kernels, or why they cannot run, found once per process
    if "c-kernel" in request.node.name.replace("_", "-"):  # a parameter, or the test's name
        request.getfixturevalue("kernels")  # skips where they cannot run
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(weight_cache.SWITCH, "on")
    return tmp_path / "xdg" / "fim-lsp" / "weights"


@pytest.fixture(params=["read", "mapped"])
def way(request, monkeypatch):
    """How a hit brings the entry in: read into memory allocated for it, or mapped (here also
    where the file system would not map it on huge pages)."""
    if request.param == "read":
        monkeypatch.setattr(weight_cache, "huge_mapping", lambda fd, size: None)
    else:
        monkeypatch.setattr(weight_file, "huge_kb", lambda address: memory.HUGE_PAGE >> 10)
    return request.param


def mapped_file(address: int) -> str | None:
    """The file whose mapping holds `address` in this process, None for anonymous memory."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        span, *rest = line.split()
        start, end = (int(part, 16) for part in span.split("-"))
        if start <= address < end:
            return rest[4] if len(rest) > 4 else None
    return None


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path):
    """A copy of the tiny model that a test may rewrite."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    return folder


def load(folder, backend: str, messages: list[str] | None = None):
    def progress(message: str, percentage: int | None) -> None:
        if messages is not None:
            messages.append(message)

    return load_engine(str(folder), VOCAB, "cpu", "int8", progress, int8_backend=backend)


def logits(model: NeoX) -> torch.Tensor:
    shape = model.shape
    cache = KVCache(shape.layers, shape.heads, shape.head_dim, torch.float32, torch.device("cpu"))
    with torch.inference_mode():
        return model(IDS, cache, keep=len(IDS))


def greedy(engine, count: int = 8) -> list[int]:
    options = GenerationOptions(count, -1, 0.0, 0, False, 1024, None)
    return engine.generate(IDS, options).ids


def entries(folder) -> list:
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def no_quantizing(monkeypatch) -> None:
    """Loading from the checkpoint, quantizing and reading the transformers config all fail."""

    def refuse(*args, **kwargs):
        raise AssertionError("quantized or read the checkpoint on a cache hit")

    monkeypatch.setattr(loading, "load_neox", refuse)
    monkeypatch.setattr(loading, "read_config", refuse)
    monkeypatch.setattr(linear, "quantize", refuse)
    monkeypatch.setattr(linear, "per_channel", refuse)


@pytest.mark.parametrize("backend", OURS)
def test_a_second_load_reads_the_cache_quantizes_nothing_and_runs_the_same(
    cache, tiny_model_dir, monkeypatch, backend, way
):
    first_messages: list[str] = []
    first = load(tiny_model_dir, backend, first_messages)
    (entry,) = entries(cache)
    assert backend in entry.name
    assert not any("weight cache" in message for message in first_messages)
    assert "caching the quantized weights for the next start" in first_messages

    no_quantizing(monkeypatch)
    messages: list[str] = []
    second = load(tiny_model_dir, backend, messages)
    assert any("from the weight cache" in message for message in messages), messages
    assert messages[-1] == "model ready"
    assert torch.equal(logits(second.model), logits(first.model))
    assert greedy(second) == greedy(first)  # through the C step where it runs
    assert (second.step is None) == (first.step is None)
    assert entries(cache) == [entry]


def test_cached_c_kernel_weights_are_on_huge_page_aligned_memory_as_quantized_ones(
    cache, tiny_model_dir, monkeypatch
):
    monkeypatch.setattr(weight_cache, "huge_mapping", lambda fd, size: None)  # read, not mapped
    load(tiny_model_dir, "c-kernel")
    engine = load(tiny_model_dir, "c-kernel")
    head = engine.model.head
    assert isinstance(head, linear.Int8Linear)
    assert head.packed.nbytes >= memory.HUGE_PAGE  # 50304 x 64 in int8
    assert head.packed.data_ptr() % memory.HUGE_PAGE == 0
    # The kernel reads the buffers the layer holds.
    assert head.kernel_weights.packed == head.packed.data_ptr()
    assert head.kernel_weights.scale == head.scale.data_ptr()


def test_a_hit_maps_the_entry_where_the_kernel_maps_it_on_huge_pages(
    cache, kernels, tiny_model_dir
):
    load(tiny_model_dir, "c-kernel")
    (entry,) = entries(cache)
    with open(entry, "rb") as file:
        if weight_file.huge_mapping(file.fileno(), entry.stat().st_size) is None:
            pytest.skip("this kernel or file system maps no file on huge pages")
    engine = load(tiny_model_dir, "c-kernel")
    head, embedding = engine.model.head, engine.model.embed.weight
    for tensor in (head.packed, head.scale, embedding):  # views of the entry: nothing copied
        assert mapped_file(tensor.data_ptr()) == str(entry)
    assert weight_file.huge_kb(head.packed.data_ptr()) * 1024 >= memory.HUGE_PAGE
    assert head.kernel_weights.packed == head.packed.data_ptr()


def test_a_hit_reads_no_transformers_config(cache, tiny_model_dir, monkeypatch):
    from transformers import AutoConfig

    load(tiny_model_dir, "weight-only")
    expected = loading.read_shape(tiny_model_dir)
    calls: list[object] = []
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda *a, **k: calls.append(a))
    engine = load(tiny_model_dir, "weight-only")
    assert calls == []
    assert engine.model.shape == expected  # from the entry's metadata


def test_the_entry_is_safetensors_with_the_shape_and_what_it_was_made_from(cache, tiny_model_dir):
    from safetensors import safe_open

    engine = load(tiny_model_dir, "c-kernel" if linear.kernel_problem() is None else "weight-only")
    (entry,) = entries(cache)
    with safe_open(entry, framework="pt") as opened:
        about = json.loads(opened.metadata()["fim_lsp"])
        assert about["shape"]["layers"] == engine.model.shape.layers
        assert about["identity"]["source"]["folder"] == str(tiny_model_dir.resolve())
        assert about["identity"]["kernels"] == native.recipe_digest()
        stored = opened.get_tensor("embed.weight")
    assert torch.equal(stored, engine.model.embed.weight)


def test_changed_source_weights_miss_and_the_entry_is_replaced(cache, model_dir, monkeypatch):
    from safetensors.torch import load_file, save_file

    before = load(model_dir, "weight-only")
    (old,) = entries(cache)
    tensors = load_file(model_dir / "model.safetensors")
    tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"] *= 2
    time.sleep(0.01)  # a new modification time even on coarse clocks
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})

    messages: list[str] = []
    after = load(model_dir, "weight-only", messages)
    assert not any("from the weight cache" in message for message in messages)
    (new,) = entries(cache)  # the old entry of this model is gone
    assert new != old
    monkeypatch.setenv(weight_cache.SWITCH, "off")
    fresh = load(model_dir, "weight-only")
    assert torch.equal(logits(after.model), logits(fresh.model))
    assert not torch.equal(logits(after.model), logits(before.model))


def test_a_changed_config_misses(cache, model_dir):
    load(model_dir, "weight-only")
    config = json.loads((model_dir / "config.json").read_text())
    config["layer_norm_eps"] = 1e-3
    (model_dir / "config.json").write_text(json.dumps(config))
    messages: list[str] = []
    engine = load(model_dir, "weight-only", messages)
    assert not any("from the weight cache" in message for message in messages)
    assert engine.model.shape.eps == 1e-3


def test_the_key_depends_on_kernels_code_int8_layers_and_source(cache, model_dir, monkeypatch):
    precision = choose("cpu", "int8", "weight-only")
    entry = weight_cache.entry_for(model_dir, precision, None)
    assert entry is not None
    assert weight_cache.entry_for(model_dir, precision, None) == entry  # stable
    with monkeypatch.context() as patched:
        patched.setattr(native, "recipe_digest", lambda: "another recipe")
        other_kernels = weight_cache.entry_for(model_dir, precision, None)
    assert other_kernels is not None and other_kernels.path != entry.path
    for changed in (
        weight_cache.entry_for(model_dir, choose("cpu", "int8", "torch-dynamic"), None),
        weight_cache.entry_for(model_dir, precision, 2048),  # another trained context
    ):
        assert changed is not None and changed.path != entry.path
    code = weight_cache.CODE
    monkeypatch.setattr(weight_cache, "CODE", code[:-1])
    other_code = weight_cache.entry_for(model_dir, precision, None)
    assert other_code is not None and other_code.path != entry.path


def test_another_kernel_recipe_misses_at_load(cache, tiny_model_dir, monkeypatch):
    load(tiny_model_dir, "weight-only")
    monkeypatch.setattr(native, "recipe_digest", lambda: "another recipe")
    messages: list[str] = []
    load(tiny_model_dir, "weight-only", messages)
    assert not any("from the weight cache" in message for message in messages)
    assert len(entries(cache)) == 1  # the new one replaced the old


def truncate(path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 1000)


def flip_a_weight(path) -> None:
    with open(path, "r+b") as file:
        file.seek(path.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0x10]))


def break_the_header(path) -> None:
    with open(path, "r+b") as file:
        file.seek(20)
        file.write(b"}}}}")


def change_the_shape(path) -> None:
    """A metadata value no tensor's shape shows (the trained context), with its JSON intact."""
    data = path.read_bytes()
    at = data.index(b'\\"positions\\": ') + len(b'\\"positions\\": ')
    path.write_bytes(data[:at] + (b"9" if data[at : at + 1] != b"9" else b"8") + data[at + 1 :])


def empty(path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "damage", [truncate, flip_a_weight, break_the_header, change_the_shape, empty]
)
def test_a_broken_entry_is_reported_deleted_and_rebuilt(cache, tiny_model_dir, caplog, damage, way):
    fresh = load(tiny_model_dir, "weight-only")
    (entry,) = entries(cache)
    damage(entry)
    messages: list[str] = []
    with caplog.at_level(logging.WARNING, logger="fim_lsp.engine.weight_cache"):
        engine = load(tiny_model_dir, "weight-only", messages)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(entry) in warning.getMessage() and "deleted" in warning.getMessage()
    assert "caching the quantized weights for the next start" in messages  # quantized again
    assert torch.equal(logits(engine.model), logits(fresh.model))
    messages.clear()
    again = load(tiny_model_dir, "weight-only", messages)  # the rebuilt entry is good
    assert any("from the weight cache" in message for message in messages)
    assert torch.equal(logits(again.model), logits(fresh.model))


def test_quantization_none_bitsandbytes_and_the_switch_cache_nothing(
    cache, tiny_model_dir, monkeypatch
):
    assert weight_cache.entry_for(tiny_model_dir, choose("cpu", "none"), None) is None
    load_engine(str(tiny_model_dir), VOCAB, "cpu", "none")
    assert entries(cache) == []
    bitsandbytes = Precision("cpu", torch.float32, BITSANDBYTES, "bitsandbytes")
    assert weight_cache.entry_for(tiny_model_dir, bitsandbytes, None) is None
    monkeypatch.setenv(weight_cache.SWITCH, "off")
    load(tiny_model_dir, "weight-only")
    assert entries(cache) == []


def test_an_unwritable_cache_folder_is_a_warning_and_loading_goes_on(
    tmp_path, tiny_model_dir, monkeypatch, caplog
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setenv(weight_cache.SWITCH, "on")
    with caplog.at_level(logging.WARNING, logger="fim_lsp.engine.weight_cache"):
        engine = load(tiny_model_dir, "weight-only")
    assert "cannot write the weight cache entry" in caplog.text
    assert len(greedy(engine, 2)) == 2
    assert list(tmp_path.iterdir()) == [blocker]


def test_entries_of_models_that_are_gone_and_stale_temporaries_are_removed(
    cache, tiny_model_dir, model_dir
):
    load(model_dir, "weight-only")
    (gone,) = entries(cache)
    stale = cache / ".left-by-a-crash.safetensors.123.tmp"
    stale.write_bytes(b"partial")
    old = time.time() - 2 * weight_cache.STALE_TEMPORARY_S
    os.utime(stale, (old, old))
    recent = cache / ".being-written.safetensors.456.tmp"
    recent.write_bytes(b"partial")
    shutil.rmtree(model_dir)
    load(tiny_model_dir, "weight-only")
    (kept,) = entries(cache)
    expected = weight_cache.entry_for(tiny_model_dir, choose("cpu", "int8", "weight-only"), None)
    assert expected is not None and kept == expected.path != gone
    assert not stale.exists() and recent.exists()


def test_no_entry_is_written_where_it_would_nearly_fill_the_disk(
    cache, tiny_model_dir, monkeypatch, caplog
):
    usage = shutil.disk_usage(tiny_model_dir)
    monkeypatch.setattr(
        weight_cache.shutil, "disk_usage", lambda path: usage._replace(free=1 << 29)
    )
    with caplog.at_level(logging.WARNING, logger="fim_lsp.engine.weight_cache"):
        engine = load(tiny_model_dir, "weight-only")
    assert "not caching the quantized weights" in caplog.text
    assert entries(cache) == [] and len(greedy(engine, 2)) == 2


def test_tensors_in_many_chunks_read_back_the_same_and_each_chunk_is_checked(
    cache, tiny_model_dir, monkeypatch, caplog, way
):
    monkeypatch.setattr(weight_file, "CHUNK", 4096)  # the embedding in 3144 chunks
    fresh = load(tiny_model_dir, "weight-only")
    (entry,) = entries(cache)
    messages: list[str] = []
    cached = load(tiny_model_dir, "weight-only", messages)
    assert any("from the weight cache" in message for message in messages)
    assert torch.equal(logits(cached.model), logits(fresh.model))
    flip_a_weight(entry)
    with caplog.at_level(logging.WARNING, logger="fim_lsp.engine.weight_cache"):
        again = load(tiny_model_dir, "weight-only")
    assert "fails the checksum" in caplog.text
    assert torch.equal(logits(again.model), logits(fresh.model))


def test_a_start_from_the_cache_imports_neither_transformers_nor_torchs_compiler(
    cache, tiny_model_dir
):
    """A fresh process, as a restart: transformers (1.2 s) is for the config, which the entry
    holds; torch's compiler and sympy (2-3 s) come with Python references that building the
    model on the meta device must not run."""
    load(tiny_model_dir, "weight-only")
    code = (
        "import sys; from fim_lsp.engine import load_engine; "
        f"load_engine({str(tiny_model_dir)!r}, {VOCAB}, 'cpu', 'int8', "
        "lambda message, percentage: print(message), int8_backend='weight-only'); "
        "print(sorted(m for m in ('transformers', 'sympy', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "from the weight cache" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ---- mapped and checked early, while the server imports torch (weight_file.check_early) -------


@pytest.fixture
def early(cache, monkeypatch):
    """Entries mapped on any file system; no early mapping left over from the test."""
    monkeypatch.setattr(weight_file, "huge_kb", lambda address: memory.HUGE_PAGE >> 10)
    yield weight_file.early
    weight_file.early.clear()


def refuse_checks(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("checked again")

    monkeypatch.setattr(weight_cache, "verify", refuse)  # a mapped entry
    monkeypatch.setattr(weight_cache, "read_chunk", refuse)  # a read one


def test_an_entry_checked_early_is_taken_as_mapped_and_not_checked_again(
    cache, early, tiny_model_dir, monkeypatch
):
    fresh = load(tiny_model_dir, "weight-only")
    (entry,) = entries(cache)
    weight_file.check_early(cache)
    assert early[entry].verdict.result(timeout=60) is None
    refuse_checks(monkeypatch)
    engine = load(tiny_model_dir, "weight-only")
    assert torch.equal(logits(engine.model), logits(fresh.model))
    assert mapped_file(engine.model.embed.weight.data_ptr()) == str(entry)
    assert early == {}  # taken


def test_an_entry_found_broken_early_is_reported_deleted_and_rebuilt(
    cache, early, tiny_model_dir, caplog
):
    fresh = load(tiny_model_dir, "weight-only")
    (entry,) = entries(cache)
    flip_a_weight(entry)
    weight_file.check_early(cache)
    assert isinstance(early[entry].verdict.result(timeout=60), weight_file.Invalid)
    with caplog.at_level(logging.WARNING, logger="fim_lsp.engine.weight_cache"):
        engine = load(tiny_model_dir, "weight-only")
    assert "fails the checksum" in caplog.text and "deleted" in caplog.text
    assert torch.equal(logits(engine.model), logits(fresh.model))
    assert len(entries(cache)) == 1  # rebuilt


def test_an_early_mapping_of_a_file_changed_since_is_let_go_and_the_entry_checked(
    cache, early, tiny_model_dir, monkeypatch
):
    fresh = load(tiny_model_dir, "weight-only")
    (entry,) = entries(cache)
    weight_file.check_early(cache)
    assert early[entry].verdict.result(timeout=60) is None
    stat = entry.stat()
    os.utime(entry, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # written again, say
    checked: list[int] = []
    real = weight_cache.verify
    monkeypatch.setattr(
        weight_cache,
        "verify",
        lambda tensors, start, mapping, crcs: (
            checked.append(start),
            real(tensors, start, mapping, crcs),
        ),
    )
    engine = load(tiny_model_dir, "weight-only")
    assert torch.equal(logits(engine.model), logits(fresh.model))
    assert checked and early == {}


def test_an_early_mapping_of_another_entry_is_let_go_before_quantizing(
    cache, early, tiny_model_dir, monkeypatch
):
    load(tiny_model_dir, "weight-only")
    (entry,) = entries(cache)
    weight_file.check_early(cache)  # the newest entry: another backend's (or kernel's)
    assert early[entry].verdict.result(timeout=60) is None
    held: list[dict] = []
    real = loading.load_weights
    monkeypatch.setattr(
        loading, "load_weights", lambda *args: (held.append(dict(early)), real(*args))[1]
    )
    load(tiny_model_dir, "torch-dynamic")
    assert held == [{}]  # quantized with no other entry mapped
    assert len(entries(cache)) == 2


def test_nothing_is_mapped_early_without_an_entry_or_with_the_cache_off(
    cache, early, tiny_model_dir, monkeypatch
):
    weight_file.check_early(cache)  # no folder yet
    assert early == {}
    load(tiny_model_dir, "weight-only")
    monkeypatch.setenv(weight_cache.SWITCH, "off")
    weight_file.check_early(cache)
    assert early == {}
