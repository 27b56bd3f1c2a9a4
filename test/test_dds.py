"""The shipped DDS set-up: where it applies, and Fast DDS's stale shared memory is cleaned, live files kept."""
from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from xml.etree import ElementTree

import pytest

from diffusion_policy_ros.nodes.dds import (PROFILE_VARIABLE, QOS_FROM_XML_VARIABLE, apply_dds_profile,
                                           clean_stale_shared_memory, launch_environment, profile_path)

SHM = Path('/dev/shm')


def test_the_shipped_profile_comes_with_its_memory_settings():
    """Its readers' memory policy is read only with RMW_FASTRTPS_USE_QOS_FROM_XML=1: set where the
    shipped profile applies (also named by a copy's path), never for a profile of the user's own, and a
    value the user set stays."""
    assert apply_dds_profile({}) == {PROFILE_VARIABLE: str(profile_path()), QOS_FROM_XML_VARIABLE: '1'}
    source_copy = str(Path(__file__).resolve().parents[1] / 'config' / 'dds' / 'fastdds.xml')
    assert apply_dds_profile({PROFILE_VARIABLE: source_copy})[QOS_FROM_XML_VARIABLE] == '1'
    assert apply_dds_profile({QOS_FROM_XML_VARIABLE: '0'})[QOS_FROM_XML_VARIABLE] == '0'
    assert QOS_FROM_XML_VARIABLE not in apply_dds_profile({PROFILE_VARIABLE: __file__})
    assert QOS_FROM_XML_VARIABLE not in apply_dds_profile({PROFILE_VARIABLE: '/no/such/profile.xml'})


def test_launch_files_pass_on_only_the_dds_variables():
    assert launch_environment({'HOME': '/root'}) == apply_dds_profile({})
    own = {PROFILE_VARIABLE: __file__, 'ROS_DOMAIN_ID': '7'}
    assert launch_environment(own) == {PROFILE_VARIABLE: __file__}


@pytest.mark.skipif(not SHM.is_dir(), reason='Fast DDS keeps shared memory in /dev/shm on Linux only')
def test_stale_segments_are_removed_and_locked_ones_kept():
    """A segment whose owner is gone (its `_el` lock file is free) goes; one whose lock is held (a
    running participant) stays, so cleaning beside running nodes is safe."""
    dead, live = (SHM / f'fastdds_{secrets.token_hex(8)}' for _ in range(2))
    for segment in (dead, live):
        segment.write_bytes(b'\0' * 64)
        Path(f'{segment}_el').touch()
    holder = open(f'{live}_el', 'ab')
    fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        said = clean_stale_shared_memory()
        assert 'zombie segments cleaned' in said, said
        assert not dead.exists() and not Path(f'{dead}_el').exists()
        assert live.exists() and Path(f'{live}_el').exists()
    finally:
        holder.close()
        for path in (live, Path(f'{live}_el'), dead, Path(f'{dead}_el')):
            if path.exists():
                os.remove(path)


def test_the_profile_restates_what_rmw_fastrtps_no_longer_sets():
    """With RMW_FASTRTPS_USE_QOS_FROM_XML=1 rmw_fastrtps leaves the endpoints to the XML: readers and
    writers get data sharing off (on, a service's reply went missing in 2 of 9 calls) and writers its
    asynchronous publishing and preallocated history; readers free samples (DYNAMIC)."""
    root = ElementTree.parse(profile_path()).getroot()
    ns = {'dds': 'http://www.eprosima.com'}

    def default_profile(kind: str) -> ElementTree.Element:
        found = [p for p in root.iterfind(f'.//dds:{kind}', ns) if p.get('is_default_profile') == 'true']
        assert len(found) == 1, f'one default {kind} profile'
        return found[0]

    def text(profile: ElementTree.Element, path: str) -> str | None:
        element = profile.find('/'.join(f'dds:{part}' for part in path.split('/')), ns)
        return None if element is None else element.text

    reader, writer = default_profile('data_reader'), default_profile('data_writer')
    assert text(reader, 'historyMemoryPolicy') == 'DYNAMIC'
    assert text(reader, 'qos/data_sharing/kind') == 'OFF'
    assert text(writer, 'qos/data_sharing/kind') == 'OFF'
    assert text(writer, 'qos/publishMode/kind') == 'ASYNCHRONOUS'
    assert text(writer, 'historyMemoryPolicy') == 'PREALLOCATED_WITH_REALLOC'
