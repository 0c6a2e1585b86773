"""The caffe engine's helper process: runs under the Caffe root's python3 (3.9) with numpy and pycaffe only.

Modes (argv[1]):

``serve NET WEIGHTS|- [GPU]``
    Loads NET in the TEST phase (with WEIGHTS unless ``-``) and answers requests on stdin until EOF.
``init NET OUT SEED``
    Seeds Caffe's generator, builds NET (its fillers run) and saves the parameters as the .caffemodel OUT.
``info [GPU]``
    Prints one JSON line: Caffe's version, the BLAS library loaded and the mode.

Messages are frames: an unsigned 64-bit little-endian length, then that many bytes. A request is a JSON
header frame (``{"op": "shapes"}`` or ``{"op": "forward", "inputs": [...], "outputs": [...]}``) followed by
one ``.npy`` frame per input; a reply is a JSON header (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``)
followed by one ``.npy`` frame per output. The protocol owns the original stdout; anything else written to
stdout (C++ included) goes to stderr.
"""
import io
import json
import os
import struct
import sys

import numpy as np

LENGTH = struct.Struct("<Q")


def read_frame(stream):
    """One frame's bytes, or None at end of input."""
    head = stream.read(LENGTH.size)
    if len(head) < LENGTH.size:
        return None
    (size,) = LENGTH.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def write_frame(stream, data):
    stream.write(LENGTH.pack(len(data)))
    stream.write(data)


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def set_device(caffe, gpu):
    if gpu is None:
        caffe.set_mode_cpu()
    else:
        caffe.set_mode_gpu()
        caffe.set_device(gpu)


def forward(caffe, net, header, arrays):
    """Reshape the named input blobs to the arrays, forward the whole net, return the named output blobs."""
    for name, array in zip(header["inputs"], arrays):
        if name not in net.blobs:
            raise KeyError("the net has no blob %r (blobs: %s)" % (name, ", ".join(net.blobs)))
        blob = net.blobs[name]
        blob.reshape(*array.shape)
        blob.data[...] = array
    missing = [name for name in header["outputs"] if name not in net.blobs]
    if missing:
        raise KeyError("the net has no blob %s (blobs: %s)" % (", ".join(map(repr, missing)), ", ".join(net.blobs)))
    net.forward()
    return [net.blobs[name].data.copy() for name in header["outputs"]]


def serve(caffe, net_path, weights, gpu, requests, replies):
    set_device(caffe, gpu)
    if weights == "-":
        net = caffe.Net(net_path, caffe.TEST)
    else:
        net = caffe.Net(net_path, caffe.TEST, weights=weights)
    write_frame(replies, json.dumps({"ok": True, "ready": True}).encode())
    replies.flush()
    while True:
        frame = read_frame(requests)
        if frame is None:
            return
        header = json.loads(frame.decode())
        arrays = [np.load(io.BytesIO(read_frame(requests)), allow_pickle=False) for _ in header.get("inputs", ())]
        payload = []
        try:
            if header["op"] == "shapes":
                reply = {"ok": True, "shapes": {name: list(net.blobs[name].data.shape) for name in net.inputs}}
            elif header["op"] == "forward":
                payload = forward(caffe, net, header, arrays)
                reply = {"ok": True, "outputs": header["outputs"]}
            else:
                reply = {"ok": False, "error": "unknown request %r" % header["op"]}
        except (KeyError, ValueError, RuntimeError) as exc:
            reply, payload = {"ok": False, "error": str(exc).strip("'\"")}, []
        write_frame(replies, json.dumps(reply).encode())
        for array in payload:
            write_frame(replies, npy_bytes(array))
        replies.flush()


def init(caffe, net_path, out, seed):
    caffe.set_mode_cpu()
    caffe.set_random_seed(seed)
    net = caffe.Net(net_path, caffe.TEST)
    net.save(out)


def blas_library():
    """The BLAS implementation mapped into this process (OpenBLAS, MKL, ATLAS; else the generic libblas)."""
    with open("/proc/self/maps") as maps:
        names = {os.path.realpath(line.split()[-1]) for line in maps if "/" in line}
    libraries = sorted(p for p in names if os.path.basename(p).startswith("lib")
                       and any(k in os.path.basename(p).lower() for k in ("blas", "mkl", "atlas")))
    specific = [p for p in libraries if not os.path.basename(p).startswith(("libblas.", "libcblas."))]
    return ", ".join(specific or libraries) or "unknown"


def info(caffe, gpu):
    set_device(caffe, gpu)
    return {"version": caffe.__version__, "blas": blas_library(), "mode": "CPU" if gpu is None else "GPU %d" % gpu}


def main(argv):
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    import caffe

    mode = argv[1]
    if mode == "serve":
        gpu = int(argv[4]) if len(argv) > 4 else None
        serve(caffe, argv[2], argv[3], gpu, sys.stdin.buffer, replies)
    elif mode == "init":
        init(caffe, argv[2], argv[3], int(argv[4]))
    elif mode == "info":
        replies.write((json.dumps(info(caffe, int(argv[2]) if len(argv) > 2 else None)) + "\n").encode())
    else:
        sys.exit("worker.py: unknown mode %r" % mode)
    replies.flush()


if __name__ == "__main__":
    main(sys.argv)
