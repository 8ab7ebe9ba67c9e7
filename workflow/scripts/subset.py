from logivote.data.bagging import write_subset
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    write_subset(
        snakemake.input[0],
        int(snakemake.wildcards.k),
        snakemake.params.base_seed,
        snakemake.params.fraction,
        snakemake.output.subset,
        snakemake.output.oob,
    )
