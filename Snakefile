# Entry point at the repository root: the workflow itself lives in workflow/ (rules, scripts, report
# captions, profiles, config schema). `snakemake --cores 2` from here builds the default target below.
include: "workflow/Snakefile"


# An `include:` never sets the default target, so the root Snakefile declares its own.
rule all:
    """The default target (`snakemake --cores 2`): every figure of this scale, the ours-vs-paper table and
    the DVC metrics/plot files."""
    default_target: True
    localrule: True
    input:
        rules.figures.input,
        rules.summaries.input,
