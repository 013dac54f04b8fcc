# Data preparation (thin wrappers around `lop data ...`, docs/data.md).
#
#   data/prepared/<dataset>-standin   learnable stand-ins in the official raw formats (smoke/demo scales)
#   data/prepared/<dataset>           the real datasets (paper scale)
#
# A training job's inputs are the data folders its resolved problem names (any problem value under
# data/prepared/), so Snakemake prepares exactly the data the scheduled jobs need. ImageNet32 is never
# downloaded: its rule fails with the licence instructions until the official zip is in data/raw/imagenet32.

DATASETS = ("mnist", "cifar10", "cifar100", "imagenet32")


wildcard_constraints:
    dataset="|".join(DATASETS),


rule standin_raw:
    output:
        temp(directory("data/raw/{dataset}-standin")),
    log:
        str(LOGS / "data" / "{dataset}-standin.raw.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop data standin {wildcards.dataset} --size demo --raw {output} > {log} 2>&1"


rule standin_prepare:
    input:
        "data/raw/{dataset}-standin",
    output:
        directory("data/prepared/{dataset}-standin"),
    log:
        str(LOGS / "data" / "{dataset}-standin.prepare.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop data prepare {wildcards.dataset} --raw {input} --out {output} > {log} 2>&1"


rule mtil_standin:
    """The MTIL stand-ins (tiny generated images), written directly in the prepared layout of lop.data.mtil;
    the real MTIL datasets are prepared by the user (docs/protocols/moe_mtil.md, "Data")."""
    output:
        directory("data/prepared/mtil-standin"),
    log:
        str(LOGS / "data" / "mtil-standin.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop data standin mtil --raw {output} > {log} 2>&1"


rule download:
    """Official raw files, md5-checked (MNIST, CIFAR-100); ImageNet32 fails with the licence instructions."""
    output:
        directory("data/raw/{dataset}"),
    log:
        str(LOGS / "data" / "{dataset}.download.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop data download {wildcards.dataset} --raw {output} > {log} 2>&1 || (cat {log} >&2; exit 1)"


rule prepare:
    input:
        "data/raw/{dataset}",
    output:
        directory("data/prepared/{dataset}"),
    log:
        str(LOGS / "data" / "{dataset}.prepare.log"),
    conda:
        "../envs/lop.yaml"
    shell:
        "lop data prepare {wildcards.dataset} --raw {input} --out {output} > {log} 2>&1"
