# Pretrained networks (budgeted_cl, docs/protocols/budgeted_cl.md): one rule per checkpoint that a
# scheduled job names in problem.pretrained. `lop pretrain` trains it once; the training jobs read it.
# The pretraining fingerprint (the problem fields it depends on) is a `params:` value, so editing them
# retrains it; the DVC train stage of the experiment caches it as an output.

if not FROM_CACHE:
    for _ckpt, (_params, _fp, _data) in PRETRAINED.items():

        rule:
            name:
                rule_name("pretrain", _ckpt)
            input:
                _data,  # the prepared data (e.g. the CIFAR-100 stand-in) is made first
            output:
                _ckpt,
            params:
                fingerprint=_fp,
                file=_params,
                scale=SCALE,
            log:
                str(LOGS / "pretrain" / SCALE / f"{Path(_ckpt).name}.log"),
            conda:
                "../envs/lop.yaml"
            shell:
                "lop pretrain --params {params.file} --scale {params.scale} --out {output} > {log} 2>&1"
