"""The reason for a diffusion policy: with one observation and two demonstrated ways to act, it
samples both, where a regression (BC) policy averages them into an action nobody demonstrated."""
import numpy as np
import pytest
import torch

from diffusion_policy_ros.core.config import ActionSpec, ObservationSpec, PolicyConfig
from diffusion_policy_ros.core.normalizer import Normalizer
from diffusion_policy_ros.core.policy import build_policy

HORIZON, ACTION_DIM, STATE_DIM = 8, 2, 3
CENTER = 0.2  # the data mean: half way between the two modes
RAMP = 0.8 + torch.linspace(0.0, 0.3, HORIZON)[None, :, None]  # |offset| of a mode from CENTER per row


def demonstrations(n: int, generator: torch.Generator) -> torch.Tensor:
    """Chunks going up (CENTER + RAMP) or down (CENTER - RAMP) with equal probability."""
    sign = torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, -1.0)
    return CENTER + sign[:, None, None] * RAMP * torch.ones(1, 1, ACTION_DIM)


def mode_of(chunks: torch.Tensor) -> torch.Tensor:
    """+1 / -1 for a chunk within 0.25 (mean abs) of the up / down mode, 0 otherwise."""
    up = (chunks - (CENTER + RAMP)).abs().mean(dim=(1, 2)) < 0.25
    down = (chunks - (CENTER - RAMP)).abs().mean(dim=(1, 2)) < 0.25
    return up.long() - down.long()


def train(policy_kind: str, steps: int = 300, batch_size: int = 128) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    normalizer = Normalizer.fit({'state': np.full((10, STATE_DIM), 0.5, np.float32),
                                 'action': demonstrations(1000, generator).numpy()})
    policy = build_policy(PolicyConfig.tiny(policy=policy_kind), ObservationSpec(state_dim=STATE_DIM),
                          ActionSpec(dim=ACTION_DIM), normalizer)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=1e-2, total_steps=steps)
    state = torch.full((batch_size, 2, STATE_DIM), 0.5)  # the SAME observation for every sample
    for _ in range(steps):
        loss = policy.compute_loss({'state': state, 'action': demonstrations(batch_size, generator)},
                                   generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return policy


def sample(policy: torch.nn.Module, n: int = 200) -> torch.Tensor:
    return policy.predict_action({'state': torch.full((n, 2, STATE_DIM), 0.5)},
                                 generator=torch.Generator().manual_seed(1))


@pytest.mark.slow
def test_diffusion_policy_samples_both_modes_bc_collapses_to_the_mean():
    data = demonstrations(2000, torch.Generator().manual_seed(3))
    assert (mode_of(data) != 0).all()  # the mode test recognises every demonstration ...
    data_mean = data.mean(dim=0, keepdim=True)
    assert mode_of(data_mean).item() == 0  # ... and the average of them is neither mode

    chunks = sample(train('diffusion'))
    modes = mode_of(chunks)
    assert (modes == 1).float().mean() >= 0.3
    assert (modes == -1).float().mean() >= 0.3
    assert (modes != 0).float().mean() >= 0.8  # and samples are demonstrations, not blends

    bc_chunks = sample(train('bc'))
    assert (mode_of(bc_chunks) == 0).all()  # BC never reproduces a demonstrated mode ...
    assert (bc_chunks - data_mean).abs().max() < 0.3  # ... it predicts the mean of the two


def test_predict_action_chunk_is_reproducible_with_a_seeded_generator():
    policy = build_policy(PolicyConfig.tiny(), ObservationSpec(state_dim=STATE_DIM), ActionSpec(dim=ACTION_DIM),
                          Normalizer.fit({'state': np.zeros((4, STATE_DIM)), 'action': np.random.rand(4, ACTION_DIM)}))
    window = {'state': np.zeros((2, STATE_DIM))}
    first = policy.predict_action_chunk(window, generator=torch.Generator().manual_seed(5))
    again = policy.predict_action_chunk(window, generator=torch.Generator().manual_seed(5))
    other = policy.predict_action_chunk(window, generator=torch.Generator().manual_seed(6))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
