from logivote.data.flatten import Source, flatten
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    flatten(
        [Source(**source) for source in snakemake.params.sources],
        snakemake.output.train,
        snakemake.output.test,
    )
