"""Training windows: Chi et al.'s edge padding, episode boundaries, split by episode, normaliser stats."""
import numpy as np
import pytest
import torch
from data_helpers import ARM, MODEL_HW, write_demo_bag, demo_config

from diffusion_policy_ros.data.convert import convert_bags
from diffusion_policy_ros.data.episodes import (DatasetError, EpisodeData, SequenceDataset, fit_normalizer_stats,
                                                load_episode_dataset, split_episodes,
                                                training_frames)

LENGTHS = (5, 9, 7)


def toy_data() -> EpisodeData:
    """Frame f of episode e: state = [e, f], action = [e, 100 + f], image pixels = global frame index."""
    state, action, images = [], [], []
    frame = 0
    for e, length in enumerate(LENGTHS):
        for f in range(length):
            state.append([e, f])
            action.append([e, 100 + f])
            images.append(np.full((4, 6, 3), frame, np.uint8))
            frame += 1
    return EpisodeData(arrays={'cam': np.stack(images), 'state': np.array(state, np.float32),
                               'action': np.array(action, np.float32)},
                       episode_ends=np.cumsum(LENGTHS), attrs={'camera_keys': ['cam']})


def reference_windows(episode_ends, horizon, pad_before, pad_after, values):
    """Chi et al.'s SequenceSampler written out plainly: copy the in-episode part, then repeat the
    first/last copied frame into the padding."""
    out = []
    for i, end in enumerate(episode_ends):
        start = 0 if i == 0 else episode_ends[i - 1]
        length = end - start
        for idx in range(-pad_before, length - horizon + pad_after + 1):
            buffer_start, buffer_end = max(idx, 0) + start, min(idx + horizon, length) + start
            sample_start = buffer_start - (idx + start)
            sample_end = horizon - ((idx + horizon + start) - buffer_end)
            sample = values[buffer_start:buffer_end]
            window = np.zeros((horizon, *values.shape[1:]), values.dtype)
            window[sample_start:sample_end] = sample
            window[:sample_start] = sample[0]
            window[sample_end:] = sample[-1]
            out.append(window)
    return np.stack(out)


@pytest.mark.parametrize('n_obs,horizon,n_action', [(2, 4, 3), (2, 6, 2), (1, 3, 3), (3, 8, 4)])
def test_windows_match_chi_sequence_sampler(n_obs, horizon, n_action):
    data = toy_data()
    dataset = SequenceDataset(data, n_obs, horizon, ['cam'], n_action_steps=n_action)
    ref_action = reference_windows(data.episode_ends, horizon, n_obs - 1, n_action - 1, data.arrays['action'])
    ref_state = reference_windows(data.episode_ends, horizon, n_obs - 1, n_action - 1, data.arrays['state'])
    assert len(dataset) == len(ref_action) == sum(L - horizon + n_obs + n_action - 1 for L in LENGTHS)
    for i in range(len(dataset)):
        item = dataset[i]
        np.testing.assert_array_equal(item['action'].numpy(), ref_action[i])
        np.testing.assert_array_equal(item['state'].numpy(), ref_state[i][:n_obs])
        assert item['cam'].shape == (n_obs, 3, 4, 6) and item['cam'].dtype == torch.uint8
        # every window stays inside one episode
        assert len(set(item['action'][:, 0].tolist())) == 1


def test_padding_repeats_first_and_last_frame():
    dataset = SequenceDataset(toy_data(), n_obs_steps=2, horizon=4, camera_keys=['cam'], n_action_steps=3)
    first = dataset[0]
    assert first['state'].tolist() == [[0, 0], [0, 0]]  # the observation before the start is frame 0 again
    assert first['action'][:, 1].tolist() == [100, 100, 101, 102]
    assert first['cam'][:, 0, 0, 0].tolist() == [0, 0]
    last = dataset[len(dataset) - 1]  # episode 2 (7 frames), window starts at its frame 5
    assert last['state'].tolist() == [[2, 5], [2, 6]]
    assert last['action'][:, 1].tolist() == [105, 106, 106, 106]
    assert last['cam'][:, 0, 0, 0].tolist() == [5 + 9 + 5, 5 + 9 + 6]


def test_episode_subset_and_split_by_episode():
    train, val = split_episodes(10, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8 and set(train) | set(val) == set(range(10))
    assert not set(train) & set(val)
    np.testing.assert_array_equal(split_episodes(10, 0.2, seed=3)[1], val)
    assert not all(np.array_equal(split_episodes(10, 0.2, seed=s)[1], val) for s in range(4, 10))
    assert split_episodes(1, 0.5, 0)[1].size == 0 and split_episodes(3, 0.9, 0)[0].size == 1
    assert split_episodes(5, 0.0, 0)[1].size == 0
    data = toy_data()
    only_middle = SequenceDataset(data, 2, 4, ['cam'], episode_indices=[1], n_action_steps=3)
    assert len(only_middle) == 9 - 4 + 1 + 2 + 1  # L - horizon + pad_before + pad_after + 1
    assert {int(only_middle[i]['state'][0, 0]) for i in range(len(only_middle))} == {1}
    with pytest.raises(DatasetError, match=r'\[3\] out of range'):
        SequenceDataset(data, 2, 4, ['cam'], episode_indices=[3])


def test_normalizer_stats_use_train_episodes_only():
    data = toy_data()
    stats = fit_normalizer_stats(data, [0, 2])
    assert stats['state']['min'].tolist() == [0, 0] and stats['state']['max'].tolist() == [2, 6]
    assert stats['action']['max'].tolist() == [2, 106]  # episode 1 reaches 108, but it is held out
    frames = training_frames(data, [2], keys=['state'])
    assert list(frames) == ['state'] and frames['state'][:, 1].tolist() == list(range(7))
    plain = fit_normalizer_stats(dict(data.arrays), [1], episode_ends=data.episode_ends)
    assert plain['action']['min'].tolist() == [1, 100] and plain['action']['max'].dtype == np.float32


def test_bad_inputs_are_named(tmp_path):
    data = toy_data()
    with pytest.raises(DatasetError, match='data/wrist'):
        SequenceDataset(data, 2, 4, ['wrist'])
    with pytest.raises(DatasetError, match='data/cam has 21 frames.*says 20'):
        EpisodeData(arrays=data.arrays, episode_ends=[5, 14, 20])
    with pytest.raises(DatasetError, match='nothing_here'):
        load_episode_dataset(tmp_path / 'nothing_here')


def test_converted_dataset_feeds_a_dataloader(tmp_path):
    for name in ('a', 'b'):
        write_demo_bag(tmp_path / 'bags' / name)
    convert_bags([tmp_path / 'bags'], demo_config(), tmp_path / 'ds', progress=False)
    data = load_episode_dataset(tmp_path / 'ds')
    assert data.n_episodes == 2 and data.attrs['joint_names'] == list(ARM)
    dataset = SequenceDataset(tmp_path / 'ds', n_obs_steps=2, horizon=16, camera_keys=None, n_action_steps=8)
    assert dataset.camera_keys == ['front', 'wrist'] and len(dataset) == 2 * (20 - 16 + 1 + 7 + 1)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True)))
    assert batch['front'].shape == (4, 2, 3, *MODEL_HW) and batch['front'].dtype == torch.uint8
    assert batch['state'].shape == (4, 2, 3) and batch['action'].shape == (4, 16, 3)
    assert batch['action'].dtype == torch.float32
