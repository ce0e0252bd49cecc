"""Real structures for the generator: mmCIF with assemblies, PDB, EM maps, and their use."""

from __future__ import annotations

import gzip
from pathlib import Path

import mrcfile
import numpy as np
import pytest
from cryodiscovery.core.synthetic.config import SimulationConfig
from cryodiscovery.core.synthetic.generator import simulate_run
from cryodiscovery.core.synthetic.library import (
    find_structures,
    load_structure,
    parse_mmcif,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "maps_models"

_CIF = """data_TEST
#
loop_
_pdbx_struct_assembly_gen.assembly_id
_pdbx_struct_assembly_gen.oper_expression
_pdbx_struct_assembly_gen.asym_id_list
1 '(1-2)' A
2 1 A
#
loop_
_pdbx_struct_oper_list.id
_pdbx_struct_oper_list.type
_pdbx_struct_oper_list.matrix[1][1]
_pdbx_struct_oper_list.matrix[1][2]
_pdbx_struct_oper_list.matrix[1][3]
_pdbx_struct_oper_list.vector[1]
_pdbx_struct_oper_list.matrix[2][1]
_pdbx_struct_oper_list.matrix[2][2]
_pdbx_struct_oper_list.matrix[2][3]
_pdbx_struct_oper_list.vector[2]
_pdbx_struct_oper_list.matrix[3][1]
_pdbx_struct_oper_list.matrix[3][2]
_pdbx_struct_oper_list.matrix[3][3]
_pdbx_struct_oper_list.vector[3]
1 'identity operation' 1 0 0 0 0 1 0 0 0 0 1 0
2 'crystal symmetry operation' -1 0 0 50 0 -1 0 0 0 0 1 0
#
loop_
_atom_site.group_PDB
_atom_site.id
_atom_site.type_symbol
_atom_site.label_atom_id
_atom_site.label_comp_id
_atom_site.label_asym_id
_atom_site.Cartn_x
_atom_site.Cartn_y
_atom_site.Cartn_z
_atom_site.pdbx_PDB_model_num
ATOM 1 C CA ALA A 1.0 2.0 3.0 1
ATOM 2 O O ALA A 2.0 2.0 3.0 1
ATOM 3 H H ALA A 2.5 2.0 3.0 1
HETATM 4 O O HOH A 9.0 9.0 9.0 1
ATOM 5 C CA ALA A 7.0 7.0 7.0 2
#
"""


def test_mmcif_first_model_heavy_atoms_and_first_assembly() -> None:
    s = parse_mmcif(_CIF, "test")
    # Two heavy atoms of model 1 (no hydrogen, water or model 2), twice (two operators).
    assert len(s.points) == 4
    # The second copy is turned about z and moved 50 Å along x (x -> 50 - x).
    np.testing.assert_allclose(
        sorted(s.points[:, 0] - s.points[:, 0].mean()), [-24.0, -23.0, 23.0, 24.0]
    )
    np.testing.assert_allclose(sorted(s.weights), [6.0, 6.0, 8.0, 8.0])


def test_library_finds_and_loads_cif_gz_pdb_and_maps(tmp_path: Path) -> None:
    (tmp_path / "a.cif.gz").write_bytes(gzip.compress(_CIF.encode()))
    (tmp_path / "b.pdb").write_text(
        "ATOM      1  CA  ALA A   1      11.104  13.207   2.100  1.00  0.00           C\n"
    )
    vol = np.zeros((16, 16, 16), dtype=np.float32)
    vol[6:10, 6:10, 6:10] = 1.0
    with mrcfile.new(tmp_path / "c.mrc") as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = 2.0
    (tmp_path / "notes.txt").write_text("not a structure")
    found = find_structures(tmp_path)
    assert [p.name for p in found] == ["a.cif.gz", "b.pdb", "c.mrc"]
    assert len(load_structure(str(found[0])).points) == 4
    assert len(load_structure(str(found[1])).points) == 1
    cube = load_structure(str(found[2]))
    assert len(cube.points) == 64 and 6.0 < cube.diameter < 16.0  # 8 Å cube at 2 Å/px
    assert find_structures(tmp_path / "absent") == ()


def test_generator_runs_on_a_given_structure(tmp_path: Path) -> None:
    vol = np.zeros((24, 24, 24), dtype=np.float32)
    zz, yy, xx = np.mgrid[:24, :24, :24] - 11.5
    vol[(xx / 9) ** 2 + (yy / 5) ** 2 + (zz / 4) ** 2 < 1] = 1.0
    path = tmp_path / "ellipsoid.mrc"
    with mrcfile.new(path) as mrc:
        mrc.set_data(vol)
        mrc.voxel_size = 3.0
    config = SimulationConfig(
        n_classes=6, box_sizes=(64,), shapes=("atomic",), structures=(str(path),)
    )
    run = simulate_run(config, 3)
    assert run.molecule == "ellipsoid" and len(run.classes) == 6


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data/maps_models is absent")
def test_every_shared_structure_loads_at_a_plausible_size() -> None:
    files = find_structures(SHARED)
    assert len(files) >= 14
    for path in files:
        s = load_structure(str(path))
        assert len(s.points) > 500, path
        assert 30.0 < s.diameter < 400.0, (path, s.diameter)
