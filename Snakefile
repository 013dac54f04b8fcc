# Entry point at the repository root: the workflow itself lives in workflow/ (rules, scripts, report
# captions, profiles). `snakemake --cores 2 figures` from here and from a checkout's root are the same.
include: "workflow/Snakefile"
