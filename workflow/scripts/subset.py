from logivote.data.bagging import write_subset
from logivote.logs import log_to

with log_to(snakemake.log[0]):
    write_subset(
        train_path=snakemake.input[0],
        k=int(snakemake.wildcards.k),
        base_seed=snakemake.params.base_seed,
        fraction=snakemake.params.fraction,
        subset_out=snakemake.output.subset,
        oob_out=snakemake.output.oob,
    )
