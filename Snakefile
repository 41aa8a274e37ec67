"""Power-sampling experiments: data → models → generation → grading → metrics → plots → report.

snakemake -c2                                    # the default toy world, on CPU
snakemake -c2 --configfile config/paper.yaml     # another study
snakemake --report reports/report.html           # the HTML report
"""

from snakemake.utils import min_version

min_version("9.0")


# The default study, unless a config is given with --configfile (which would otherwise
# be merged into this one, mixing tasks and methods of two studies).
if not config:

    configfile: "config/config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/generate.smk"
include: "rules/grade.smk"
include: "rules/metrics.smk"
include: "rules/plots.smk"
include: "rules/studies.smk"
include: "rules/report.smk"


# Bookkeeping too small to be worth a cluster job: run inside the Snakemake process.
localrules:
    all,
    config_snapshot,
    export_alpaca_eval,
    judge_alpaca_eval,  # calls a web API: compute nodes often have no internet
    plot,


rule all:
    default_target: True
    input:
        all_outputs(),
