"""The ``steer-sweep`` command line.

Exit codes: 0 success; 1 the run failed (every trial failed, or an
unexpected error); 2 bad input (config, arguments, data, model, store);
130 interrupted. An error prints one paragraph; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from orchestrator import commands as C
from orchestrator.ranking import RULE

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one paragraph starting ``error:`` (exit 2),
    like every other bad-input error of the command line."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _count(text: str) -> int:
    """A positive whole number (for --top, --last, --best)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


STUDY_HELP = "study name, or its study YAML (which also gives the store root)"


def _store_args(p: argparse.ArgumentParser) -> None:
    """Where a read command finds the study's store."""
    p.add_argument(
        "--root",
        help=f"store root: a folder, file:///path or s3://bucket/prefix (default: the study "
        f"YAML's store.root, else ${C.ROOT_ENV})",
    )
    p.add_argument("--config", help="read the store root from this study YAML")
    p.add_argument("--endpoint-url", help="S3 endpoint (MinIO, Ceph); else AWS_ENDPOINT_URL")


def _read_command(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str = ""
) -> argparse.ArgumentParser:
    """A subcommand that reads one stored study: its study argument and store flags."""
    p = sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. "
                       + description)  # fmt: skip
    p.add_argument("study", help=STUDY_HELP)
    _store_args(p)
    return p


def _optimize_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="optimize one steering vector on one prompt",
        description="Optimize a single one-shot steering vector; save it as safetensors.",
    )
    p.add_argument(
        "--model", default="smollm2-135m-instruct", help="bundled name, path, .gguf or hub id"
    )
    p.add_argument("--dtype", default="auto")
    p.add_argument("--device", default="auto")
    p.add_argument("--prompt", required=True, help="the user message (chat-templated unless --raw)")
    p.add_argument("--raw", action="store_true", help="use the prompt verbatim, no chat template")
    p.add_argument(
        "--promote", action="append", default=[], help="a completion to promote (repeatable)"
    )
    p.add_argument(
        "--suppress", action="append", default=[], help="a completion to suppress (repeatable)"
    )
    p.add_argument(
        "--layer", type=int, default=12, help="block whose input is steered; <0 counts from the end"
    )
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--norm", type=float, default=None, help="norm bound r (none by default)")
    p.add_argument("--init-norm", type=float, default=1.0)
    p.add_argument("--max-iters", type=int, default=30)
    p.add_argument("--coldness", type=float, default=0.7)
    p.add_argument(
        "--log-base", type=float, default=10.0, help="10: hartleys (paper); 2.718...: nats"
    )
    p.add_argument("--intervention", choices=["add", "clamp"], default="add")
    p.add_argument("--clamp-coef", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the vector here (.safetensors)")
    p.set_defaults(func=C.cmd_optimize)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _try_args(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "try",
        help="apply a stored vector to prompts: steered and unsteered text",
        description=(
            "Load the study's model, apply a stored vector as it was trained (intervention, "
            "layers, token selection) and print the steered and unsteered continuations of "
            "each prompt (greedy unless --temperature). Without --prompt or --file, the "
            "study's first held-out prompts. With --vector FILE (.safetensors, or a .gguf "
            "llama.cpp control vector), no study: the file's vector is added at the layer it "
            "records (or --layer) for the model it records (or --model)."
        ),
    )
    p.add_argument("study", nargs="?", help=STUDY_HELP + " (not with --vector)")
    p.add_argument(
        "vector_id", nargs="?", help="the vector to apply (or --best N); before or after options"
    )
    _store_args(p)
    p.add_argument("--best", type=_count, default=None, help="the N best vectors, in turn")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--file", type=Path, default=None, help="prompts, one per line")
    p.add_argument("--raw", action="store_true", help="prompts verbatim, no chat template")
    p.add_argument(
        "--examples", type=_count, default=3, help="held-out prompts when none are given"
    )
    p.add_argument("--scale", type=_finite, default=1.0, help="multiply the vector; -1 negates")
    p.add_argument(
        "--tokens", type=_count, default=None, help="tokens to generate (default: the study's)"
    )
    p.add_argument("--temperature", type=_finite, default=0.0, help="0: greedy; >0 samples")
    p.add_argument("--seed", type=int, default=0, help="the sampling seed")
    p.add_argument("--json", action="store_true", help="one JSON object per vector")
    p.add_argument(
        "--vector",
        type=Path,
        default=None,
        help="a vector file instead of a study: safetensors, or a GGUF control vector",
    )
    p.add_argument("--layer", type=int, default=None, help="with --vector: the layer")
    p.add_argument("--model", default=None, help="with --vector: the model (else the study's)")
    p.add_argument("--dtype", default=None, help="default: the study's, else auto")
    p.add_argument("--device", default=None, help="default: auto (a GPU if there is one)")
    p.set_defaults(func=C.cmd_try)


def _change_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--extend",
        action="store_true",
        help="the study exists with a smaller n_trials: raise it and run the new trials",
    )
    p.add_argument(
        "--force-config",
        action="store_true",
        help="the study exists with another config: accept this one (the old one is kept "
        "in the store under _studies/STUDY/history/)",
    )
    p.add_argument(
        "--force-lease",
        action="store_true",
        help="take the study's lease even if another run holds it (that run then stops)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="steer-sweep", description="Distributed sweeps of one-shot LLM steering vectors."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors: no progress bars"
    )
    parser.add_argument("--version", action="version", version=f"steer-sweep {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run or resume a study",
        description=(
            "Run a study YAML on Ray: joins a running cluster (or RAY_ADDRESS), else starts a local "
            "one. Rerunning the same command resumes from the store."
        ),
    )
    p.add_argument("config", help="study YAML")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. n_trials=20")
    _change_args(p)
    p.set_defaults(func=C.cmd_run)

    p = sub.add_parser(
        "check",
        help="check a study without running it, and print its plan and cost",
        description=(
            "Everything `run` checks before it starts Ray (config, the model's config and "
            "tokenizer without weights, layer range, task and targets, store reachability), "
            "then the plan: trials, vectors, vector-steps, held-out evaluations, and an "
            "estimate of GPU time. Writes nothing."
        ),
    )
    p.add_argument("config", help="study YAML")
    p.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. n_trials=20")
    p.add_argument(
        "--tflops", type=float, default=None,
        help="sustained TFLOP/s of one GPU for the estimate (default 270: measured, the "
        "Gemma-2-2B shape on one H200)",
    )  # fmt: skip
    p.set_defaults(func=C.cmd_check)

    p = _read_command(
        sub,
        "status",
        "trials and vectors of a study, from the store",
        "Whether a run holds the study now, the count of trials by state and of vectors, and "
        "the last trials with their values and parameters.",
    )
    p.add_argument("--last", type=_count, default=10, help="show the last N trials")
    p.set_defaults(func=C.cmd_status)

    p = _read_command(sub, "best", "the best vectors of a study, from the store", RULE)
    p.add_argument("--top", type=_count, default=10, help="how many vectors to list")
    p.set_defaults(func=C.cmd_best)

    p = _read_command(
        sub,
        "report",
        "write report.html (PNG figures) and summary.parquet, from the store",
        "Reads a study from the store only (never a running study) and writes report.html, "
        "its figures under figures/ and summary.parquet to --out.",
    )
    p.add_argument("--out", help="output folder (default: report-STUDY)")
    p.add_argument("--top", type=_count, default=10, help="vectors in the top table and similarity")
    p.add_argument("--embed", action="store_true", help="inline the PNGs: one self-contained file")
    p.set_defaults(func=C.cmd_report)

    p = _read_command(
        sub,
        "compact",
        "merge a study's small Parquet files",
        "Rewrites each table's per-trial files as a few large ones; every query gives the "
        "same rows before and after. Safe beside a running study.",
    )
    p.set_defaults(func=C.cmd_compact)

    p = _read_command(
        sub,
        "export",
        "write vectors as safetensors or llama.cpp GGUF control vectors",
        "Vector ids may come before or after the options; --best N adds the N best "
        "vectors that can be exported (the ranking of `steer-sweep best`).",
    )
    p.add_argument("vector_ids", nargs="*", help="vector ids (before or after the options)")
    p.add_argument(
        "--best", type=_count, default=None, help="also export the N best exportable vectors"
    )
    p.add_argument("--format", choices=["safetensors", "gguf"], default="safetensors")
    p.add_argument("--out", required=True, help="output folder (or a file name)")
    p.set_defaults(func=C.cmd_export)

    p = sub.add_parser(
        "submit",
        help="submit a study to a Ray cluster (wraps `ray job submit`)",
        description="Submit `steer-sweep run CONFIG` as a Ray job: the working dir is "
        "uploaded, and the job's driver runs on the cluster (watch it in the dashboard).",
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.add_argument(
        "--address", default="http://127.0.0.1:8265", help="the cluster's dashboard address"
    )
    p.add_argument("--working-dir", default=".", help="uploaded as the job's working dir")
    p.add_argument(
        "--pip", nargs="*", default=None, help="extra pip packages for the job's runtime env"
    )
    p.add_argument("--submission-id", default=None)
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--dry-run", action="store_true", help="print the command only")
    _change_args(p)
    p.set_defaults(func=C.cmd_submit)

    _optimize_args(sub)
    _try_args(sub)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line. ``export`` and ``try`` take their positional
    words (vector ids; the study and vector id) before or after their
    options (``export STUDY --root R ID``); other extra words are errors."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    words = [e for e in extra if not e.startswith("-")]
    if extra and len(words) == len(extra) and args.command in ("export", "try"):
        if args.command == "export":
            args.vector_ids = [*args.vector_ids, *words]
            return args
        given = [w for w in (args.study, args.vector_id) if w is not None] + words
        if len(given) <= 2:
            args.study, args.vector_id = (given + [None, None])[:2]
            return args
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("steer-sweep")
    except PackageNotFoundError:
        return "unknown (not installed)"


# Errors that are one paragraph and an exit code, by the module that defines
# them. Looked up in sys.modules, never imported: an exception of a class can
# only be raised once its module is loaded, and a command that reads the store
# must not import torch (workers.models) to name an error.
_STOPPED = ("orchestrator.run.committer:StoreUnavailable", "orchestrator.store.lease:LeaseLost",
            "orchestrator.run.placement:PlacementTimeout")  # fmt: skip
_BAD_INPUT = ("orchestrator.commands:BadInput", "orchestrator.study.config:ConfigError",
              "orchestrator.datasets.rows:DatasetError",
              "orchestrator.run.preflight:PreflightError",
              "orchestrator.store.errors:StoreConfigError",
              "orchestrator.store.errors:StudyConfigMismatch",
              "orchestrator.store.errors:NoSuchStudy", "orchestrator.store.lease:LeaseHeld",
              "workers.steering.encoding:JobError", "workers.models.spec:ModelLoadError",
              "workers.models.layers:LayerResolutionError")  # fmt: skip


def _is_one_of(exc: BaseException, names: Sequence[str]) -> bool:
    for name in names:
        module, _, cls = name.partition(":")
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, cls)):
            return True
    return False


def _exit_code(exc: BaseException) -> int | None:
    """1 for a run that stopped, 2 for bad input, None for anything else."""
    if _is_one_of(exc, _STOPPED):
        return C.EXIT_FAILED
    if _is_one_of(exc, _BAD_INPUT):
        return C.EXIT_BAD_INPUT
    return None


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse(argv)
    except SystemExit as exc:
        if exc.code in (0, None):
            raise  # --help
        return int(exc.code) if isinstance(exc.code, int) else C.EXIT_BAD_INPUT
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # botocore at DEBUG would print request headers, session tokens included.
    logging.getLogger("botocore").setLevel(logging.WARNING)
    logging.getLogger("gguf").setLevel(logging.WARNING)  # a line per file written
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`steer-sweep status ... | head`): not an error.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return C.EXIT_OK
    except Exception as exc:  # noqa: BLE001 - one paragraph, not a wall of frames
        if args.debug:
            raise
        code = _exit_code(exc)
        if code is not None:  # bad input, or a run that stopped: nothing finished is lost
            print(f"error: {exc}", file=sys.stderr)
            return code
        print(
            f"error: {type(exc).__name__}: {exc}\n(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return C.EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
