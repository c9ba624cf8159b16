"""Peak memory of loading and tokenising a data set that has one very long line (docs/performance.md).

Writes a JSONL training split of 200 ordinary lines and one line of `--mb` megabytes, then in a fresh
process loads it (harness.definitions.data.load_split) and tokenises it (harness.definitions.data.encode, max_length 128) with a
WordPiece tokenizer trained on the spot, and prints the peak resident memory above the imports, per stage.
`--no-cut` tokenises the whole text (the behaviour before texts were cut to max_length * CHARS_PER_TOKEN).

    python bench/long_line_memory.py --mb 50
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = """
import resource, sys
from pathlib import Path
def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
from tokenizers import BertWordPieceTokenizer
from transformers import PreTrainedTokenizerFast
from harness.definitions.tasks import task_type
from harness.definitions import data as D
from harness.definitions.config import DatasetConfig
root, cut = Path(sys.argv[1]), sys.argv[2] == "cut"
if not cut:
    D.CHARS_PER_TOKEN = 10**12
wp = BertWordPieceTokenizer()
wp.train([str(root / "corpus.txt")], vocab_size=500)
tok = PreTrainedTokenizerFast(tokenizer_object=wp._tokenizer, pad_token="[PAD]", unk_token="[UNK]")
start = peak_mb()
spec = DatasetConfig(name="long", task="sentiment", domain="legal", path="long")
split = D.load_split(spec, root, "train", cache_dir=root / "hf-cache")
loaded = peak_mb()
enc = D.encode(tok, split, 128, task_type("sentiment").label_set(split.labels))
print(f"{start:.0f} {loaded - start:.0f} {peak_mb() - start:.0f} {max(map(len, enc.input_ids))}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="length of the long line in megabytes")
    parser.add_argument("--no-cut", action="store_true", help="tokenise whole texts (the old behaviour)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="long-line-") as tmp:
        root = Path(tmp)
        words = "the court held that the contract was void and the claim failed ".split()
        (root / "corpus.txt").write_text(" ".join(words * 200) + "\n")
        (root / "long").mkdir()
        long_text = (" ".join(words) + " ") * int(args.mb * 2**20 / len(" ".join(words) + " "))
        with open(root / "long" / "train.jsonl", "w", encoding="utf-8") as f:
            for i in range(200):
                f.write(json.dumps({"text": " ".join(words[i % 7:]), "label": "ab"[i % 2]}) + "\n")
            f.write(json.dumps({"text": long_text, "label": "a"}) + "\n")
        del long_text
        out = subprocess.run([sys.executable, "-c", CHILD, str(root), "whole" if args.no_cut else "cut"],
                             capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    imports, load, total, longest = out
    print(f"long line {args.mb:g} MB, {'whole texts' if args.no_cut else 'texts cut'}: peak RSS after imports "
          f"{imports} MB; above that: after load_split +{load} MB, after encode +{total} MB (longest encoding {longest} tokens)")


if __name__ == "__main__":
    main()
