"""ReconBoost reference loop, written from huacong/ReconBoost (commit 14ab57a: train.py `main`,
models/dynamic_net.py `DynamicNet`, schedule.py fixed mode) as a plain stage loop:

    for stage: name = modalities[stage % M]
        phase 1 (epochs_per_stage epochs), a fresh SGD over name's learner:
            out_join = DynamicNet.forward(mask_model=name)   # no grad; constant c0 while empty
            boosting = -w1 (t * log_softmax(out)).mean(-1) + w2 (t * softmax(out_join) * log_softmax(out)).mean(-1)
            loss = boosting (stage 0) or boosting + alpha * MSE(softmax(out).detach(), softmax(pre_out).detach())
        DynamicNet.add(name)
        phase 2 (correct_epoch epochs), a fresh SGD over the ensemble's parameters and boost_rate:
            CE(boost_rate * sum_k learner_k, y)

A learner is the model's fused-head block for its modality (the code's model with its `fc` = shared head);
the project's unimodal heads are added as the project defines its loss settings (probes on detached features
under `multimodal` with separate heads; CE through the encoders under `multimodal+unimodal`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def train(ref, epochs_per_stage=4, correct_epochs=4, weight1=5.0, weight2=1.0, alpha=0.5,
          consolidation="detached"):
    model, mods = ref.model, ref.modalities
    boost_rate = ref.extra.boost_rate
    defaults = ref.optimizer.defaults
    with_uni = ref.loss_setting == "multimodal+unimodal"
    probes = ref.loss_setting == "multimodal" and ref.unimodal_head == "separate"

    def sgd(params):
        return torch.optim.SGD(params, lr=ref.optimizer.param_groups[0]["lr"], momentum=defaults["momentum"],
                               weight_decay=defaults["weight_decay"])

    def extra_terms(feats, labels):
        """(term in the objective, probe term) for the modalities in feats."""
        total = 0.0
        for k, z in feats.items():
            if with_uni:
                head = model.fusion.block_logits({k: z}, k) if ref.unimodal_head == "fused_block" else model.heads[k](z)
                total = total + F.cross_entropy(head, labels)
            elif probes:
                total = total + F.cross_entropy(model.heads[k](z.detach()), labels)
        return total

    models_name = []  # DynamicNet.models_name
    epoch, stage = 0, 0
    while True:
        name = mods[stage % len(mods)]
        pre_name = mods[(mods.index(name) - 1) % len(mods)]  # 2 modalities: the other; MSA: text<-audio<-visual<-text
        # phase 1: optim.SGD(model.parameters()) -- the learner's encoder and its head
        opt = sgd([*model.encoder(name).parameters(), *model.fusion.parameters(), *model.heads[name].parameters()])
        for _ in range(epochs_per_stage):
            if epoch == ref.num_epochs:
                return
            for g in opt.param_groups:
                g["lr"] = ref.optimizer.param_groups[0]["lr"]
            model.train()
            for inputs, labels in ref.batches[epoch]:
                with torch.no_grad():
                    prediction = None
                    for k in models_name:
                        if k == name:
                            continue
                        pred = model.fusion.block_logits({k: model.encoder(k)(inputs[k])}, k)
                        prediction = pred if prediction is None else prediction + pred
                z = model.encoder(name)(inputs[name])
                out_obj = model.fusion.block_logits({name: z}, name)
                if prediction is None:  # stage 0, no pretrained learners: c0 expanded to (B, 1)
                    join = torch.ones(len(labels), 1)
                else:
                    join = (boost_rate * prediction).detach().softmax(1)
                target = torch.zeros(len(labels), ref.num_classes).scatter_(1, labels.view(-1, 1), 1)
                log_p = out_obj.log_softmax(1)  # the code calls log_softmax twice: same values, one node here
                boosting = -weight1 * (target * log_p).mean(-1) + weight2 * (target * join * log_p).mean(-1)
                if stage == 0:
                    loss = boosting
                else:
                    pre_out = model.fusion.block_logits({pre_name: model.encoder(pre_name)(inputs[pre_name])}, pre_name)
                    current = out_obj.softmax(1) if consolidation == "gradient" else out_obj.detach().softmax(1)
                    ga = F.mse_loss(current, pre_out.detach().softmax(1))
                    loss = boosting + alpha * ga
                loss = loss.mean() + extra_terms({name: z}, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            ref.scheduler.step()
            epoch += 1
            yield
        if name in models_name:  # DynamicNet.add replaces the modality's previous learner
            models_name.remove(name)
        models_name.append(name)
        # phase 2 (global rectification): net_ensemble.parameters() = encoders, head, boost_rate
        params = [p for k in models_name for p in model.encoder(k).parameters()]
        params += [*model.fusion.parameters(), boost_rate]
        params += [p for k in models_name for p in model.heads[k].parameters()]
        opt = sgd(params)
        for _ in range(correct_epochs):
            if epoch == ref.num_epochs:
                return
            for g in opt.param_groups:
                g["lr"] = ref.optimizer.param_groups[0]["lr"]
            model.train()
            for inputs, labels in ref.batches[epoch]:
                feats = {k: model.encoder(k)(inputs[k]) for k in models_name}
                prediction = None
                for k in models_name:
                    pred = model.fusion.block_logits(feats, k)
                    prediction = pred if prediction is None else prediction + pred
                loss = F.cross_entropy(boost_rate * prediction, labels) + extra_terms(feats, labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            ref.scheduler.step()
            epoch += 1
            yield
        stage += 1
