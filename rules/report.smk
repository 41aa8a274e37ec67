"""The HTML report: `snakemake --report reports/report.html` collects every report() output.

The rule below also keeps a copy of the config the results were made with, so the report
and the results folder always say which settings produced them.
"""


rule config_snapshot:
    output:
        report(
            "results/config.yaml",
            caption="../reports/config.rst",
            category="4. Configuration",
        ),
    log:
        "logs/config_snapshot.log",
    conda:
        "../environment.yml"
    params:
        config=config,
    script:
        "../workflow/scripts/config_snapshot.py"
