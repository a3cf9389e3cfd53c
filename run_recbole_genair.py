"""recbole-genair command line.

    python run_recbole_genair.py --model=SASRec --dataset=ml-100k [--method=genair]
                                 [--config_files="a.yaml b.yaml"] [--key=value ...]
    python run_recbole_genair.py --model=SASRec --dataset=Amazon_Beauty --nproc=4
                                 [--world_size=N --ip=HOST --port=PORT --group_offset=N]
    python run_recbole_genair.py --tune --model=SASRec --dataset=ml-100k [--method=genair]
                                 [--search_space=FILE.yaml] [--num_samples=N]
                                 [--max_concurrent=N] [--ray_address=ADDR] [--out=DIR]

Any other ``--key=value`` is a RecBole setting and overrides the YAML layers, as in
RecBole's own ``run_recbole.py``.
"""
from __future__ import annotations

import argparse
import sys

from recbole_genair.registry import ABLATIONS, BACKBONES, UsageError, methods


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--model", "-m", default="SASRec", help=f"backbone: {', '.join(BACKBONES)}")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="a data set prepared under dataset/")
    parser.add_argument("--method", default="genair",
                        help=f"item representation: {', '.join(methods())}; "
                             f"paper Table 3 ablations: {', '.join(ABLATIONS)}")
    parser.add_argument("--config_files", default=None, help="space-separated YAML files")
    parser.add_argument("--nproc", type=int, default=1,
                        help="training processes on this machine, as RecBole's run_recbole.py: one per GPU "
                             "(NCCL), or CPU processes (gloo) when CUDA is absent")
    parser.add_argument("--world_size", type=int, default=-1, help="processes on all machines (default: nproc)")
    parser.add_argument("--ip", default="localhost", help="address of the machine running process 0")
    parser.add_argument("--port", default="5678", help="free port on that machine")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank of this machine's first process")
    parser.add_argument("--tune", action="store_true", help="Ray Tune hyperparameter search")
    parser.add_argument("--search_space", default=None, help="YAML search space (default: properties/tune/<method>.yaml)")
    parser.add_argument("--num_samples", type=int, default=None,
                        help="times the search space is run (Ray's num_samples): every grid point that many "
                             "times, random keys drawn anew each time (default: 1 with a grid, else 10)")
    parser.add_argument("--max_concurrent", type=int, default=None,
                        help="trials at once (default: fits the CPUs; a resumed sweep keeps its first run's)")
    parser.add_argument("--ray_address", default=None, help="address of a running Ray cluster")
    parser.add_argument("--out", default=None,
                        help="the sweep's directory (default: a new one under ray_results/); "
                             "one holding an interrupted sweep of the same settings is resumed")
    return parser.parse_known_args(argv)


def main(argv=None) -> int:
    args, rest = parse(argv)
    from recbole_genair.config import command_line_overrides
    from recbole_genair.tune import TUNE_OPTIONS
    try:
        overrides = command_line_overrides(rest)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tune_only = [f"--{k}" for k in TUNE_OPTIONS if getattr(args, k) is not None]
    if tune_only and not args.tune:
        print(f"error: {', '.join(tune_only)} only work with --tune", file=sys.stderr)
        return 2
    from recbole_genair.distributed import launches_processes
    if args.tune and launches_processes(args.nproc, args.world_size):
        print("error: --nproc/--world_size train one run on several processes; a --tune sweep runs its "
              "trials through Ray (--ray_address, --max_concurrent)", file=sys.stderr)
        return 2
    files = args.config_files.split() if args.config_files else None
    try:
        if args.tune:
            from recbole_genair.tune import tune
            tune(model=args.model, dataset=args.dataset, method=args.method, config_file_list=files,
                 search_space=args.search_space, num_samples=args.num_samples,
                 max_concurrent=args.max_concurrent, ray_address=args.ray_address, overrides=overrides,
                 out_dir=args.out)
        else:
            from recbole_genair.quick_start import run
            run(model=args.model, dataset=args.dataset, method=args.method, config_file_list=files,
                config_dict=overrides, nproc=args.nproc, world_size=args.world_size, ip=args.ip,
                port=args.port, group_offset=args.group_offset)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
