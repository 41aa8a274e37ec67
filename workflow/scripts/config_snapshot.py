"""Save the validated config the results were made with."""

import yaml

from powersampling.io import write_text_atomic
from powersampling.logs import job_log

with job_log(snakemake.log[0]):
    write_text_atomic(snakemake.output[0], yaml.safe_dump(snakemake.params.config, sort_keys=False))
