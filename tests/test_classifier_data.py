"""The classifier's HDF5Data inputs (concatenation, zero halves, multi-hot labels, seeded order, bounded files), the
materialised prototxt copies (only paths, class count and input width change) and the checks on mismatched inputs."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import yaml

from harrison.classifier_data import build_data, materialise, output_layer
from harrison.config import PROJECT_ROOT, load_config
from harrison.dataset.lists import write_split, write_vocab
from harrison.errors import HarrisonError
from harrison.files import sha256, write_json
from harrison.proto import caffe_pb2
from harrison.proto.io import read_net, read_solver

DEMO = PROJECT_ROOT / "prototxt" / "demo"
DIMS = {"object": 5, "scene": 3}
CLASSES = 4
COUNTS = {"train": 11, "test": 4}


@pytest.fixture()
def run(tmp_path):
    """A run folder with a 4-class dataset and object (5-d) and scene (3-d) feature files, and its config."""
    work = tmp_path / "run"
    dataset = work / "dataset"
    rng = np.random.default_rng(2)
    write_vocab(dataset / "vocab.tsv", [(f"tag{i}", 10 - i) for i in range(CLASSES)])
    write_json(dataset / "manifest.json", {"image_root": str(tmp_path), "num_classes": CLASSES})
    labels = {}
    for split, count in COUNTS.items():
        images = [f"{split}/{i}.jpg" for i in range(count)]
        labels[split] = [sorted(set(rng.integers(0, CLASSES, size=1 + i % 3).tolist())) for i in range(count)]
        write_split(dataset / f"{split}.tsv", images, labels[split])
        for feature, dim in DIMS.items():
            path = work / "features" / feature / f"{split}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as handle:
                handle["features"] = (np.arange(count * dim).reshape(count, dim) + 1000 * (feature == "scene")).astype(np.float32)
                handle.create_dataset("image", data=np.array(images, dtype=object), dtype=h5py.string_dtype())
                handle.attrs.update({"list_sha256": sha256(dataset / f"{split}.tsv"), "net_sha256": feature,
                                     "weights_sha256": "w", "preprocess_sha256": "p", "blob": "fc7", "on_bad_image": "zero"})
    config = {
        "name": "unit", "workdir": str(work), "dataset": {"seed": 3},
        "features": {f: {"net": str(DEMO / f"vgg_{f}" / "deploy.prototxt"), "preprocess": str(DEMO / f"vgg_{f}" / "preprocess.yaml"),
                         "weights": None} for f in DIMS},
        "models": {m: {"features": fs, "solver": str(DEMO / "classifier" / f"solver_{m}.prototxt"),
                       "deploy": str(DEMO / "classifier" / "deploy.prototxt")}
                   for m, fs in {"object": ["object"], "scene": ["scene"], "object_scene": ["object", "scene"]}.items()},
        "evaluate": {"k": 2},
    }
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path), labels


def rows_of(listing):
    data, label, images = [], [], []
    for line in listing.read_text().split():
        with h5py.File(line, "r") as handle:
            data.append(handle["data"][:])
            label.append(handle["label"][:])
            images += [name.decode() for name in handle["image"][:]]
    return np.concatenate(data), np.concatenate(label), images


@pytest.mark.parametrize("model,filled", [("object", ["object"]), ("scene", ["scene"]), ("object_scene", ["object", "scene"])])
def test_data_concatenates_in_config_order_with_zero_halves(run, model, filled):
    config, labels = run
    built = build_data(config, model)
    assert built.dims == DIMS and built.total_dim == 8 and built.num_classes == CLASSES
    for split, count in COUNTS.items():
        data, label, images = rows_of(built.lists[split])
        assert data.shape == (count, 8) and data.dtype == np.float32 and label.dtype == np.float32
        index = np.array([int(name.split("/")[1].split(".")[0]) for name in images])
        expected_order = np.random.default_rng(3).permutation(count) if split == "train" else np.arange(count)
        assert index.tolist() == expected_order.tolist()
        object_part, scene_part = data[:, :5], data[:, 5:]
        want_object = (np.arange(count * 5).reshape(count, 5)[index]).astype(np.float32)
        want_scene = (np.arange(count * 3).reshape(count, 3)[index] + 1000).astype(np.float32)
        assert np.array_equal(object_part, want_object if "object" in filled else np.zeros_like(want_object))
        assert np.array_equal(scene_part, want_scene if "scene" in filled else np.zeros_like(want_scene))
        hot = np.zeros((count, CLASSES), dtype=np.float32)
        for row, i in enumerate(index):
            hot[row, labels[split][i]] = 1
        assert np.array_equal(label, hot)


def test_files_are_bounded_and_listed_with_absolute_paths(run):
    config, _ = run
    built = build_data(config, "object_scene", max_file_bytes=4 * (8 + CLASSES) * 3)
    listed = built.lists["train"].read_text().split()
    assert len(listed) == 4 and all(line.startswith("/") for line in listed)
    sizes = []
    for line in listed:
        with h5py.File(line, "r") as handle:
            sizes.append(handle["data"].shape[0])
    assert sizes == [3, 3, 3, 2]


def test_materialised_copies_change_only_paths_class_count_and_input_width(run):
    config, _ = run
    built = build_data(config, "object")
    copies = materialise(config, "object", built)
    source_net, net = read_net(DEMO / "classifier" / "train_test.prototxt"), read_net(copies["train_test"])
    assert output_layer(net, copies["train_test"]).inner_product_param.num_output == CLASSES
    sources = sorted(layer.hdf5_data_param.source for layer in net.layer if layer.type == "HDF5Data")
    assert sources == sorted(str(p) for p in built.lists.values())
    for message in (source_net, net):
        output_layer(message, copies["train_test"]).inner_product_param.ClearField("num_output")
        for layer in message.layer:
            layer.hdf5_data_param.ClearField("source")
    assert net == source_net
    deploy, source_deploy = read_net(copies["deploy"]), read_net(DEMO / "classifier" / "deploy.prototxt")
    assert [layer.input_param.shape[0].dim[1] for layer in deploy.layer if layer.type == "Input"] == [8]
    for message in (deploy, source_deploy):
        output_layer(message, copies["deploy"]).inner_product_param.ClearField("num_output")
        next(layer for layer in message.layer if layer.type == "Input").input_param.shape[0].dim[1] = 0
    assert deploy == source_deploy
    solver, source_solver = read_solver(copies["solver"]), read_solver(DEMO / "classifier" / "solver_object.prototxt")
    assert solver.net == str(copies["train_test"])
    assert solver.snapshot_prefix == str(config.workdir / "models" / "object" / "snapshots" / "object")
    for message in (solver, source_solver):
        message.ClearField("net")
        message.ClearField("snapshot_prefix")
    assert solver == source_solver
    assert isinstance(solver, caffe_pb2.SolverParameter)


def test_features_from_another_list_are_refused_naming_both_files(run):
    config, _ = run
    path = config.workdir / "features" / "scene" / "test.h5"
    with h5py.File(path, "r+") as handle:
        handle.attrs["list_sha256"] = "0" * 64
    with pytest.raises(HarrisonError, match=r"scene/test\.h5 was extracted from a list .*dataset/test\.tsv"):
        build_data(config, "scene")
    assert not (config.workdir / "models" / "scene" / "data").exists()


def test_row_count_mismatch_and_missing_features_are_caught_before_writing(run):
    config, _ = run
    path = config.workdir / "features" / "object" / "train.h5"
    with h5py.File(path, "r+") as handle:
        data = handle["features"][:-1]
        del handle["features"]
        handle["features"] = data
    with pytest.raises(HarrisonError, match=r"10 rows and 11 image names .* 11 images"):
        build_data(config, "object_scene")
    path.unlink()
    with pytest.raises(HarrisonError, match="run harrison extract --feature object --split train"):
        build_data(config, "object")
    assert not (config.workdir / "models").exists()


def test_evaluate_refuses_weights_with_another_class_count_or_input_width(run, tmp_path):
    from harrison.proto.io import array_to_blob, write_caffemodel
    from harrison.stages.evaluate import check_weights

    config, _ = run
    copies = materialise(config, "object", build_data(config, "object"))

    def weights(outputs: int, width: int):
        net = caffe_pb2.NetParameter()
        for name, shape in (("fc1", (128, width)), ("fc2", (128, 128)), ("fc_out", (outputs, 128))):
            layer = net.layer.add(name=name, type="InnerProduct")
            layer.blobs.extend([array_to_blob(np.zeros(shape, np.float32)), array_to_blob(np.zeros(shape[0], np.float32))])
        return write_caffemodel(tmp_path / f"w{outputs}_{width}.caffemodel", net)

    check_weights(copies["deploy"], weights(CLASSES, 8), CLASSES, 8)
    with pytest.raises(HarrisonError, match=r"has 3 outputs in layer 'fc_out' but the dataset has 4 classes"):
        check_weights(copies["deploy"], weights(3, 8), CLASSES, 8)
    with pytest.raises(HarrisonError, match=r"expects 6-d inputs .* features are 8-d"):
        check_weights(copies["deploy"], weights(CLASSES, 6), CLASSES, 8)


def test_images_skipped_at_extraction_are_left_out_with_their_labels(run):
    config, labels = run
    path = config.workdir / "features" / "object" / "test.h5"
    with h5py.File(path, "r+") as handle:
        features, images = handle["features"][:], handle["image"][:]
        del handle["features"], handle["image"]
        handle["features"] = np.delete(features, 1, axis=0)
        handle.create_dataset("image", data=np.delete(images, 1), dtype=h5py.string_dtype())
    built = build_data(config, "object_scene")
    data, label, names = rows_of(built.lists["test"])
    assert names == ["test/0.jpg", "test/2.jpg", "test/3.jpg"] and built.counts["test"] == 3
    assert np.array_equal(data[:, :5], np.delete(features, 1, axis=0))
    assert np.array_equal(data[:, 5:], (np.arange(12).reshape(4, 3)[[0, 2, 3]] + 1000).astype(np.float32))
    assert [np.flatnonzero(row).tolist() for row in label] == [labels["test"][i] for i in (0, 2, 3)]
