"""Export a finished run for serving: merged Hugging Face model, GGUF (llama.cpp), Ollama Modelfile.

    python launch/export.py runs/<name> --out exports/<name>
    python launch/export.py runs/<name> --out exports/<name> --quant f16 --quant q8_0 --quant q4_k_m
    cd exports/<name> && ollama create <name> -f Modelfile && ollama run <name>
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from rl.export import DEFAULT_QUANTS, QUANTS, ExportError, export_run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="the run folder (runs/<name>), holding final/")
    parser.add_argument("--out", required=True, help="folder to write hf/, model-<quant>.gguf, Modelfile into "
                        "(an export there is replaced: the files its export.json lists)")
    parser.add_argument("--quant", dest="quants", action="append", metavar="TYPE",
                        help=f"a GGUF type, repeatable (default: {' and '.join(DEFAULT_QUANTS)}; "
                             f"accepted: {', '.join(QUANTS)})")
    args = parser.parse_args(argv)
    quants = args.quants or list(DEFAULT_QUANTS)
    try:  # export_run checks the run, quants and folder before any model library loads
        record = export_run(args.run, args.out, quants)
    except ExportError as e:
        parser.exit(2, f"error: {' '.join(str(e).split())}\n")
    for note in record.get("notes", []):
        print(f"note: {note}")
    print(f"exported {args.run} to {args.out}: hf/, {', '.join(record['gguf'].values())}"
          + (", Modelfile" if "modelfile" in record else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
