"""The conditional DAE of seed 000: toy reconstruction, the update rule, the early stop."""
import pytest
import torch
import torch.nn.functional as F

from structseg.structured.dae import ConditionalDAE, DAEConfig, corrupt, dae_loss, iterative_inference


def toy_masks(n, g, size=16):
    """Label maps with one axis-aligned rectangle of class 1 or 2 on background 0."""
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        hh, ww = torch.randint(4, size // 2, (2,), generator=g).tolist()
        labels[i, y0:y0 + hh, x0:x0 + ww] = 1 + i % 2
    return labels


def test_dae_reconstructs_clean_inputs_on_a_toy_problem():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cfg = DAEConfig(n_filters=8, additional_pool=0, concat_h=[], noise=0.5)
    dae = ConditionalDAE(3, {}, cfg)
    opt = torch.optim.RMSprop(dae.parameters(), lr=2e-3, alpha=0.9, eps=1e-6)
    for _ in range(150):
        labels = toy_masks(16, g)
        clean = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
        loss = dae_loss(dae(corrupt(clean, cfg.noise, g)), labels, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = toy_masks(32, torch.Generator().manual_seed(99))
    clean = F.one_hot(labels, 3).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        noisy = corrupt(clean, 0.5, torch.Generator().manual_seed(1))
        denoised = dae(noisy).argmax(1)
    assert (noisy.argmax(1) == labels).float().mean() < 0.9  # the corruption flips over 10 % of pixels
    assert (denoised == labels).float().mean() > 0.97
    assert (dae(clean).argmax(1) == labels).float().mean() > 0.98


class FixedDAE(torch.nn.Module):
    """Returns the same logits whatever its input: makes the update rule checkable by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, y, h):
        return self.logits[: y.shape[0]] if y.shape[0] == self.logits.shape[0] else self.logits[1:2]


def test_update_rule_by_hand():
    y0 = torch.tensor([[[[0.6]], [[0.3]], [[0.1]]]])  # one pixel, three classes
    logits = torch.log(torch.tensor([[[[0.2]], [[0.7]], [[0.1]]]]))
    y1 = iterative_inference(FixedDAE(logits), y0, {}, step=0.5, iterations=1, tol=0)
    # y + 0.5 * (r - y) = [0.6 + 0.5 * -0.4, 0.3 + 0.5 * 0.4, 0.1 + 0] = [0.4, 0.5, 0.1]
    torch.testing.assert_close(y1.flatten(), torch.tensor([0.4, 0.5, 0.1]))
    y2 = iterative_inference(FixedDAE(logits), y0, {}, step=3.0, iterations=1, tol=0)
    # y + 3 (r - y) = [-0.6, 1.5, 0.1] -> clipped to [0, 1], not renormalised
    torch.testing.assert_close(y2.flatten(), torch.tensor([0.0, 1.0, 0.1]))
    seen = []
    y3 = iterative_inference(FixedDAE(logits), y0, {}, step=0.5, iterations=2, tol=0,
                             on_iteration=lambda i, y: seen.append((i, y.flatten().tolist())))
    # second step: [0.4 + 0.5 * (0.2 - 0.4), 0.5 + 0.5 * (0.7 - 0.5), 0.1] = [0.3, 0.6, 0.1]
    torch.testing.assert_close(y3.flatten(), torch.tensor([0.3, 0.6, 0.1]))
    assert [i for i, _ in seen] == [1, 2]


def test_early_stop_is_per_image():
    # image 0 starts at the DAE's fixed point (g = 0): it stops; image 1 keeps moving
    r = torch.tensor([0.2, 0.7, 0.1]).view(1, 3, 1, 1)
    y0 = torch.cat([r, torch.tensor([0.6, 0.3, 0.1]).view(1, 3, 1, 1)])
    logits = torch.log(r).expand(2, 3, 1, 1)
    y = iterative_inference(FixedDAE(logits), y0, {}, step=0.5, iterations=3, tol=1e-3)
    torch.testing.assert_close(y[0].flatten(), r.flatten())
    # 0.6 -> 0.4 -> 0.3 -> 0.25 on class 0 for image 1
    assert y[1, 0].item() == pytest.approx(0.25)


def test_dae_config_errors():
    with pytest.raises(ValueError, match="unpool_type"):
        DAEConfig(unpool_type="bilinear").validate()
    with pytest.raises(ValueError, match="concat_h entry 'pool9'"):
        DAEConfig(concat_h=["pool9"]).validate()
    with pytest.raises(ValueError, match="needs the channel count"):
        ConditionalDAE(3, {}, DAEConfig(concat_h=["pool4"]))
