"""``wmhkeras experiment``: the paper's comparison of losses (Table 1, Figure 5) in one command."""

from __future__ import annotations

import click

from wmhkeras.cli.common import OutputPath, handle_errors, start_tensorflow, threads_option


@click.command("experiment")
@click.argument("configs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value, e.g. train.epochs=5 or experiment.losses=[dice,content].")
@click.option("--data", "data_path", type=click.Path(), default=None,
              help="The cohort: manifest CSV, folder with manifest.csv, or MICCAI 2017 layout (default: data.path).")
@click.option("--out", "out_dir", type=OutputPath(file_okay=False), default="experiment", show_default=True,
              help="Experiment folder; run again with the same config to continue an interrupted experiment.")
@click.option("--folds", type=click.IntRange(2), default=None,
              help="Site-stratified K-fold cross-validation instead of one hold-out split.")
@click.option("--leave-one-site-out", is_flag=True, default=False, help="Train on all sites but one, test on it; each site.")
@click.option("--quiet", is_flag=True, default=False, help="No per-epoch training lines.")
@threads_option
@handle_errors
def experiment(configs: tuple[str, ...], overrides: tuple[str, ...], data_path: str | None, out_dir: str,
               folds: int | None, leave_one_site_out: bool, quiet: bool, threads: int | None) -> None:
    """Train one generator per loss on one split, evaluate each on the hold-out (and external) set.

    CONFIGS: experiment config YAML file(s), e.g. configs/paper_miccai2017.yaml. Writes OUT/table.md,
    table.csv, figure5.png, per_subject.csv, wilcoxon.csv/.md and one run folder per arm in OUT/arms/.
    """
    from wmhkeras.experiment.runner import run_experiment

    start_tensorflow(threads)

    overrides = list(overrides)
    if folds is not None:
        overrides.append(f"experiment.folds={folds}")
    if leave_one_site_out:
        overrides.append("experiment.leave_one_site_out=true")
    result = run_experiment(configs, overrides, out_dir, data_path=data_path, verbose=0 if quiet else 2)
    click.echo(result.table, nl=False)
    counts = {s: sum(a["status"] == s for a in result.arms) for s in ("trained", "resumed", "evaluated", "skipped")}
    click.echo(f"{len(result.arms)} arms ({', '.join(f'{n} {s}' for s, n in counts.items() if n)}) "
               f"in {result.wall_time_s:.0f} s")
    click.echo(f"results: {result.out_dir}/table.md, figure5.png, per_subject.csv, wilcoxon.md")
