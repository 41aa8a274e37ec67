"""Power-sampling experiments: data → models → generation → grading → metrics → plots → report.

snakemake -c2                                    # the default toy world, on CPU
snakemake -c2 --configfile config/paper.yaml     # another study
snakemake -c2 --config seed=3                    # the default study with one value changed
snakemake --report reports/report.html           # the HTML report
"""

from snakemake.utils import min_version

min_version("9.0")


# The default study, unless another is given with --configfile: that one replaces it
# (merging would mix the tasks and methods of two studies). Values given with --config
# (`--config seed=3`, `--config generation='{batch_size: 8}'`) override keys of whichever
# config is in force; Snakemake applies them over the file, nested keys merged.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "reports/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/models.smk"
include: "rules/generate.smk"
include: "rules/calibration.smk"
include: "rules/grade.smk"
include: "rules/metrics.smk"
include: "rules/plots.smk"


# Each study's rules (powersampling.studies.STUDIES names the file of each).
for rule_file in study_rule_files():

    include: rule_file


include: "rules/report.smk"


# Bookkeeping too small to be worth a cluster job: run inside the Snakemake process.
localrules:
    all,
    config_snapshot,
    # These need the hub: run where Snakemake runs (a login node reaches it).
    download_dataset,
    download_model,
    export_alpaca_eval,
    judge_alpaca_eval,  # calls a web API: compute nodes often have no internet
    plot,


rule all:
    default_target: True
    input:
        all_outputs(),
