"""Model-token-only scoring (rl/logprobs.py) against TRL 1.16's own `_get_per_token_logps_and_entropies`."""

import pytest


def _batch(seed=0, rows=3, prompt=5, completion=9):
    import torch
    from trl.trainer.utils import add_fused_lm_head

    from rl.config import ModelSection
    from rl.models import load_model

    torch.manual_seed(seed)
    model, _ = load_model(ModelSection(name="tiny"))
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))
    vocab = model.config.get_text_config().vocab_size
    ids = torch.randint(3, vocab, (rows, prompt + completion))
    attention = torch.ones_like(ids)
    attention[0, :2] = 0  # a left-padded prompt
    attention[1, -3:] = 0  # a completion shorter than the batch's
    attention[-1, -4:] = 0  # the last chunk's rows all end early: it runs without those columns
    score = torch.rand(rows, completion) < 0.4  # the model's tokens; the rest are tool results
    score[-1] = False  # an episode without a model token (a failed generation) still yields a graph
    return model, ids, attention, completion, score


def _trl(model, ids, attention, keep, batch_size):
    from types import SimpleNamespace

    from accelerate import Accelerator
    from trl import GRPOTrainer

    stub = SimpleNamespace(accelerator=Accelerator(cpu=True))
    logps, entropies, _ = GRPOTrainer._get_per_token_logps_and_entropies(
        stub, model, ids, attention, keep, batch_size=batch_size, compute_entropy=True)
    return logps, entropies


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_model_tokens_get_trls_logprobs_entropies_and_gradients_and_the_rest_zero():
    import torch

    from rl.logprobs import score_tokens

    model, ids, attention, keep, score = _batch()
    theirs, their_entropy = _trl(model, ids, attention, keep, batch_size=2)
    lengths = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    ours, our_entropy = score_tokens(model, ids, attention, keep, score, batch_size=2, compute_entropy=True)
    hook.remove()
    assert lengths == [14, 10]  # rows 0-1 need every column; row 2 ends 4 early and runs without them
    loss_mask = score & attention[:, -keep:].bool()
    assert loss_mask.sum() > 3 and (theirs[~loss_mask] != 0).any()  # TRL scored the tool results too
    torch.testing.assert_close(ours[loss_mask], theirs[loss_mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(our_entropy[loss_mask], their_entropy[loss_mask], rtol=1e-5, atol=1e-5)
    assert (ours[~score] == 0).all() and (our_entropy[~score] == 0).all()

    # the loss TRL builds reads only masked positions: equal gradients
    their_grads = _grads(model, (_trl(model, ids, attention, keep, 2)[0] * loss_mask).sum())
    our_grads = _grads(model, (score_tokens(model, ids, attention, keep, score, 2)[0] * loss_mask).sum())
    assert their_grads.keys() == our_grads.keys() and their_grads
    for name in their_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], rtol=1e-4, atol=1e-6)


def test_only_the_model_tokens_are_projected_through_the_lm_head_on_a_cpu(lm_head_rows):
    import trl.trainer.utils as trl_utils

    from rl.logprobs import score_tokens

    model, ids, attention, keep, score = _batch(rows=2)
    _trl(model, ids, attention, keep, batch_size=None)
    score_tokens(model, ids, attention, keep, score)
    labelled = int((score & attention[:, -keep:].bool()).sum())
    assert lm_head_rows == [ids.numel() - ids.size(0), labelled]  # TRL: every position but the last; ours: the model's
    assert trl_utils._use_triton(ids.device) is False  # patched only while scoring


def test_a_mask_of_the_wrong_shape_is_named():
    from rl.logprobs import score_tokens

    model, ids, attention, keep, score = _batch()
    with pytest.raises(ValueError, match=r"score_mask has shape \(3, 8\), expected \(3, 9\)"):
        score_tokens(model, ids, attention, keep, score[:, :8])


def test_pad_masks_right_pads_with_false_and_cuts_to_width():
    from rl.logprobs import pad_masks

    assert pad_masks([[1, 0, 1], [1]], 2).tolist() == [[True, False], [True, False]]
    assert pad_masks([[0, 1]], 4).tolist() == [[False, True, False, False]]
