"""The ``steer-sweep`` command line.

Exit codes: 0 success, 1 a run failed, 2 bad input (config, arguments, data),
130 interrupted. Errors print one paragraph; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

log = logging.getLogger("steer_sweep")


def _add_optimize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "optimize",
        help="optimize one steering vector on one prompt",
        description="Optimize a single one-shot steering vector and save it as safetensors.",
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
        "--layer",
        type=int,
        default=12,
        help="block whose input is steered; negative counts from the end",
    )
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--norm", type=float, default=None, help="norm bound r (none by default)")
    p.add_argument("--init-norm", type=float, default=1.0)
    p.add_argument("--max-iters", type=int, default=30)
    p.add_argument("--coldness", type=float, default=0.7)
    p.add_argument(
        "--log-base", type=float, default=10.0, help="10: hartleys (paper), 2.718...: nats"
    )
    p.add_argument("--intervention", choices=["add", "clamp"], default="add")
    p.add_argument("--clamp-coef", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the vector here (.safetensors)")
    p.set_defaults(func=_cmd_optimize)


def _cmd_optimize(args: argparse.Namespace) -> int:
    from workers import (
        Intervention,
        LossSettings,
        ModelSpec,
        StopRules,
        VectorJob,
        chat,
        load_model,
        optimize,
    )

    if not args.promote and not args.suppress:
        raise _BadInput("give at least one --promote or --suppress target")
    started = time.perf_counter()
    lm = load_model(ModelSpec(args.model, dtype=args.dtype, device=args.device))
    log.info(
        "loaded %s (%d layers, d_model %d) in %.1f s on %s",
        lm.model_id,
        lm.n_layers,
        lm.d_model,
        time.perf_counter() - started,
        lm.device,
    )
    job = VectorJob.simple(
        "cli",
        args.prompt if args.raw else chat(args.prompt),
        promote=args.promote,
        suppress=args.suppress,
        layer=args.layer,
        lr=args.lr,
        norm_bound=args.norm,
        init_norm=args.init_norm,
        seed=args.seed,
        intervention=Intervention(args.intervention, clamp_coef=args.clamp_coef),
        loss=LossSettings(coldness=args.coldness, log_base=args.log_base),
        stop=StopRules(max_iters=args.max_iters),
    )
    started = time.perf_counter()
    [res] = optimize(lm, [job])
    elapsed = time.perf_counter() - started
    unit = "hartleys" if args.log_base == 10 else f"log{args.log_base:g} units"
    print(
        f"loss {res.initial_loss:.3f} -> {res.final_loss:.3f} {unit} in {res.iterations} steps "
        f"({res.stop_reason}, {elapsed / max(res.iterations, 1):.2f} s/step); |v| = {res.final_norm:.2f}"
    )
    if args.out is not None:
        from safetensors.numpy import save_file

        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model": lm.model_id,
            "revision": lm.revision,
            "layers": json.dumps(list(res.layers)),
            "seed": str(res.seed),
            "loss_history": json.dumps(res.loss_history),
            "log_base": str(res.log_base),
            "stop_reason": res.stop_reason,
        }
        save_file({"vector": res.vector}, str(args.out), metadata=meta)
        print(f"wrote {args.out}")
    return EXIT_OK


class _BadInput(ValueError):
    """An error in what the user typed."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="steer-sweep",
        description="Distributed sweeps of one-shot LLM steering vectors.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_optimize(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from workers.encoding import JobError
    from workers.layers import LayerResolutionError
    from workers.models import ModelLoadError

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (_BadInput, JobError, ModelLoadError, LayerResolutionError) as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
