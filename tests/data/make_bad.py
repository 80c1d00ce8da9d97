"""Writes the malformed checkpoints of tests/data/bad/ and their expected errors.

    python3 tests/data/make_bad.py     (the files are committed; rerun only to change them)

Each case is a file (or a sharded folder) and a piece of text its one-line error must contain.
"""
import json
import os
import shutil
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bad")


def st_bytes(header, data=b"", pad=True, raw_header=None):
    h = raw_header if raw_header is not None else json.dumps(header).encode()
    if pad:
        h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def f32(name, shape, begin, end):
    return {name: {"dtype": "F32", "shape": shape, "data_offsets": [begin, end]}}


ok_header = f32("w", [2], 0, 8)
cases = []


def case(name, content, expect):
    cases.append((name, expect))
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(content)


def merge(*ds):
    out = {}
    for d in ds:
        out.update(d)
    return out


shutil.rmtree(HERE, ignore_errors=True)
os.makedirs(HERE)

case("empty.safetensors", b"", "too short for the 8-byte header length")
case("short.safetensors", b"\x10\x00\x00", "too short for the 8-byte header length")
case("header_past_end.safetensors", struct.pack("<Q", 4096) + b"{}", "runs past the end of the file")
case("header_too_big.safetensors", struct.pack("<Q", 200_000_000) + b"{}" + b" " * 6,
     "exceeds the limit")
case("truncated.safetensors", st_bytes(ok_header, b"\0" * 8)[:-3],
     "run past the end of the data section")
case("bad_json.safetensors", st_bytes(None, b"", raw_header=b'{"w": {"dtype": "F32",'),
     "not valid JSON")
case("not_json_at_all.safetensors", st_bytes(None, b"", raw_header=b"PK\x03\x04garbage!"),
     "does not start with '{'")
case("json_array.safetensors", st_bytes(None, b"", raw_header=b"[1, 2, 3]"),
     "does not start with '{'")
case("trailing_garbage.safetensors", st_bytes(None, b"\0" * 8,
     raw_header=json.dumps(ok_header).encode() + b" xyz"), "bytes after the JSON object")
case("entry_not_object.safetensors", st_bytes({"w": [1, 2]}), "entry is not a JSON object")
case("unknown_dtype.safetensors",
     st_bytes({"w": {"dtype": "F7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
     "unknown dtype 'F7'")
case("dtype_not_string.safetensors",
     st_bytes({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
     "dtype is not a string")
case("missing_offsets.safetensors", st_bytes({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
     "missing field 'data_offsets'")
case("missing_shape.safetensors",
     st_bytes({"w": {"dtype": "F32", "data_offsets": [0, 8]}}, b"\0" * 8),
     "missing field 'shape'")
case("extra_field.safetensors",
     st_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8),
     "unexpected or repeated field 'x'")
case("shape_not_array.safetensors",
     st_bytes({"w": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}}, b"\0" * 8),
     "shape is not an array")
case("negative_dim.safetensors", st_bytes(f32("w", [-2], 0, 8), b"\0" * 8),
     "in 'w', field shape: the number -2 is not a non-negative integer")
case("fractional_dim.safetensors", st_bytes(f32("w", [2.5], 0, 10), b"\0" * 10),
     "in 'w', field shape: the number 2.5 is not a non-negative integer")
case("rank_too_high.safetensors", st_bytes(f32("w", [1] * 9, 0, 4), b"\0" * 4),
     "rank 9 exceeds the limit")
case("shape_overflow.safetensors", st_bytes(f32("w", [2**40, 2**40, 2**40], 0, 8), b"\0" * 8),
     "overflows")
case("offsets_one_number.safetensors",
     st_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}, b"\0" * 8),
     "data_offsets must be [begin, end]")
case("offsets_negative.safetensors", st_bytes(f32("w", [2], -8, 0), b"\0" * 8),
     "in 'w', field data_offsets: the number -8 is not a non-negative integer")
case("offsets_reversed.safetensors", st_bytes(f32("w", [0], 8, 0), b"\0" * 8),
     "end before they begin")
case("size_mismatch.safetensors", st_bytes(f32("w", [2, 3], 0, 20), b"\0" * 20),
     "need 24 bytes but data_offsets [0, 20] span 20")
case("out_of_range.safetensors", st_bytes(f32("w", [2], 0, 8), b"\0" * 4),
     "run past the end of the data section")
case("overlap.safetensors",
     st_bytes(merge(f32("a", [2], 0, 8), f32("b", [2], 4, 12)), b"\0" * 12), "overlap tensor 'a'")
case("hole.safetensors", st_bytes(merge(f32("a", [2], 0, 8), f32("b", [2], 12, 20)), b"\0" * 20),
     "unused bytes before tensor 'b'")
case("trailing_data.safetensors", st_bytes(f32("a", [2], 0, 8), b"\0" * 16),
     "after the last tensor are not used")
case("duplicate_name.safetensors",
     st_bytes(None, b"\0" * 16, raw_header=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
              b'"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}'), "'a' is defined twice")
case("metadata_not_strings.safetensors",
     st_bytes(merge({"__metadata__": {"format": 1}}, ok_header), b"\0" * 8),
     "__metadata__ value 'format' is not a string")
case("metadata_not_object.safetensors",
     st_bytes(merge({"__metadata__": "pt"}, ok_header), b"\0" * 8), "__metadata__ is not a JSON")
case("header_tiny.safetensors", struct.pack("<Q", 1) + b"{", "too short for a JSON object")

# What safetensors' reference reader (the Rust crate: str::from_utf8, then serde_json into
# usize fields) refuses and a lenient JSON parser lets through.
ok_text = b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'


def raw(name, text, expect, data=b"\0" * 8):
    case(name, st_bytes(None, data, raw_header=text), expect)


raw("float_dim.safetensors", ok_text.replace(b"[2]", b"[2.0]"),
    "in 'w', field shape: the number 2.0 is not a non-negative integer")
raw("exponent_dim.safetensors", ok_text.replace(b"[2]", b"[2e0]"), "the number 2e0 is not")
raw("dot_dim.safetensors", ok_text.replace(b"[2]", b"[2.]"), "the number 2. is not")
raw("float_offset.safetensors", ok_text.replace(b"0,8]", b"0,8.0]"),
    "in 'w', field data_offsets: the number 8.0 is not")
raw("negative_zero_offset.safetensors", ok_text.replace(b"[0,", b"[-0,"), "the number -0 is not")
raw("leading_zero_offset.safetensors", ok_text.replace(b",8]", b",008]"),
    "the number 008 has a leading zero")
raw("plus_sign_dim.safetensors", ok_text.replace(b"[2]", b"[+2]"), "not valid JSON in 'w', field shape")
raw("hex_dim.safetensors", ok_text.replace(b"[2]", b"[0x2]"), "not valid JSON in 'w', field shape")
raw("nan_dim.safetensors", ok_text.replace(b"[2]", b"[NaN]"), "not valid JSON in 'w', field shape")
raw("trailing_comma.safetensors", ok_text.replace(b"[2]", b"[2,]"), "not valid JSON")
raw("trailing_comma_object.safetensors", ok_text[:-1] + b",}", "not valid JSON")
raw("single_quotes.safetensors", ok_text.replace(b'"w"', b"'w'"), "not valid JSON")
raw("comment_after.safetensors", ok_text + b"/**/", "bytes after the JSON object")
raw("nul_padding.safetensors", ok_text + b"\0\0", "bytes after the JSON object")
raw("leading_space.safetensors", b" " + ok_text, "does not start with '{'")
raw("utf8_bom.safetensors", b"\xef\xbb\xbf" + ok_text, "does not start with '{'")
raw("invalid_utf8_name.safetensors", ok_text.replace(b'"w"', b'"w\xff"'), "is not UTF-8 (byte 3: 0xff)")
raw("overlong_utf8_name.safetensors", ok_text.replace(b'"w"', b'"w\xc0\xaf"'), "is not UTF-8 (byte 3")
raw("surrogate_utf8_name.safetensors", ok_text.replace(b'"w"', b'"w\xed\xa0\x80"'), "is not UTF-8")
raw("invalid_utf8_padding.safetensors", ok_text + b" \xfe", "is not UTF-8")
raw("tab_in_name.safetensors", ok_text.replace(b'"w"', b'"w\tx"'), "a control character inside a string")
raw("nul_in_name.safetensors", ok_text.replace(b'"w"', b'"w\0x"'), "a control character inside a string")
raw("escaped_nul_in_name.safetensors", ok_text.replace(b'"w"', b'"w\\u0000x"'), "\\u0000 in a string")
raw("lone_surrogate_escape.safetensors", ok_text.replace(b'"w"', b'"w\\udc00"'), "lone low surrogate")
raw("bad_escape.safetensors", ok_text.replace(b'"w"', b'"w\\x41"'), "an invalid escape")
raw("deep_nesting.safetensors", b'{"__metadata__":' + b"[" * 200 + b"]" * 200 + b"}",
    "nesting deeper than 128 levels", b"")
raw("metadata_repeated_key.safetensors",
    b'{"__metadata__":{"k":"1","k":"2"},' + ok_text[1:], "__metadata__ key 'k' appears twice")
raw("empty_name.safetensors", ok_text.replace(b'"w"', b'""'), "a tensor has an empty name")


# --- PyTorch checkpoints (torch.save's zip format), made without torch: stand-in modules
# named like torch's, so pickle writes the same GLOBALs torch.save does.
import io
import pickle
import sys
import types
import zipfile

_torch = types.ModuleType("torch")
_utils = types.ModuleType("torch._utils")


class FloatStorage:
    pass


FloatStorage.__module__ = "torch"
_torch.FloatStorage = FloatStorage


def _rebuild_tensor_v2(*args):
    pass


_rebuild_tensor_v2.__module__ = "torch._utils"
_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
sys.modules["torch"], sys.modules["torch._utils"] = _torch, _utils


class FakeTensor:
    def __init__(self, key, numel, offset, size, stride):
        self.args = (("storage", FloatStorage, key, "cpu", numel), offset, size, stride)

    def __reduce__(self):
        persid, offset, size, stride = self.args
        return (_rebuild_tensor_v2, (StorageRef(persid), offset, size, stride, False,
                                     collections.OrderedDict()))


class StorageRef:
    def __init__(self, persid):
        self.persid = persid


import collections  # noqa: E402


class TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.persid if isinstance(obj, StorageRef) else None


def torch_zip(obj, storages, compress=False, raw_pickle=None):
    buf = io.BytesIO()
    if raw_pickle is None:
        pbuf = io.BytesIO()
        TorchPickler(pbuf, protocol=2).dump(obj)
        raw_pickle = pbuf.getvalue()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", method) as z:
        z.writestr("archive/data.pkl", raw_pickle)
        for key, data in storages.items():
            z.writestr("archive/data/" + key, data)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


w8 = struct.pack("<2f", 1.0, 2.0)
good_bin = torch_zip(collections.OrderedDict(w=FakeTensor("0", 2, 0, (2,), (1,))), {"0": w8})
case("bin_calls_system.bin",
     torch_zip(None, {}, raw_pickle=b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00echoq\x01\x85q\x02Rq\x03."),
     "refusing to load")
case("bin_calls_builtins_eval.bin",
     torch_zip(None, {}, raw_pickle=b"\x80\x02cbuiltins\neval\nX\x01\x00\x00\x001\x85R."),
     "its pickle calls builtins.eval")
case("bin_truncated.bin", good_bin[:-30], "no ZIP end-of-directory record")
case("bin_storage_size.bin",
     torch_zip(collections.OrderedDict(w=FakeTensor("0", 3, 0, (3,), (1,))), {"0": w8}),
     "holds 8 bytes, not 3 F32 elements")
case("bin_past_storage.bin",
     torch_zip(collections.OrderedDict(w=FakeTensor("0", 2, 1, (2,), (1,))), {"0": w8}),
     "reach element 2 of a storage of 2")
case("bin_missing_storage.bin",
     torch_zip(collections.OrderedDict(w=FakeTensor("7", 2, 0, (2,), (1,))), {"0": w8}),
     "storage 'archive/data/7' is not in the archive")
case("bin_compressed.bin",
     torch_zip(collections.OrderedDict(w=FakeTensor("0", 2, 0, (2,), (1,))), {"0": w8}, compress=True),
     "is compressed")
case("bin_memo_never_stored.bin", torch_zip(None, {}, raw_pickle=b"\x80\x02h\x05."),
     "memo fetch of an index never stored")
case("bin_memo_cycle.bin",  # a dict that holds itself: a cycle through the memo
     torch_zip(None, {}, raw_pickle=b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s."),
     "'a' is not a tensor")
case("bin_list_holds_itself.bin", torch_zip(None, {}, raw_pickle=b"\x80\x02]q\x00h\x00a."),
     "holds no state dict")
case("bin_unknown_opcode.bin", torch_zip(None, {}, raw_pickle=b"\x80\x02(i__main__\nX\n."),
     "opcode 0x69")
case("bin_no_stop.bin", torch_zip(None, {}, raw_pickle=b"\x80\x02}"), "ends without STOP")
case("bin_not_a_state_dict.bin", torch_zip([1, 2], {}), "holds no state dict")
case("bin_nested.bin", torch_zip({"model": {"w": 1}}, {}), "'model' is not a tensor")
case("bin_legacy_format.bin", b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.", "legacy format")


def sharded(name, index, shards, expect):
    d = os.path.join(HERE, name)
    os.makedirs(d)
    if index is not None:
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            f.write(index if isinstance(index, str) else json.dumps(index))
    for fname, content in shards.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(content)
    cases.append((name, expect))


shard_a = st_bytes(f32("a", [2], 0, 8), b"\0" * 8)
shard_b = st_bytes(f32("b", [2], 0, 8), b"\0" * 8)
sharded("sharded_no_weight_map", {"metadata": {}}, {"s1.safetensors": shard_a},
        "missing 'weight_map'")
sharded("sharded_bad_json", '{"weight_map": {', {}, "not a JSON object")
sharded("sharded_escape", {"weight_map": {"a": "../empty.safetensors"}}, {},
        "not a plain file name")
sharded("sharded_missing_shard", {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}},
        {"s1.safetensors": shard_a}, "cannot open")
sharded("sharded_unlisted_tensor", {"weight_map": {"a": "s1.safetensors"}},
        {"s1.safetensors": st_bytes(merge(f32("a", [2], 0, 8), f32("z", [2], 8, 16)), b"\0" * 16)},
        "holds tensor 'z', which the weight_map does not list")
sharded("sharded_wrong_shard", {"weight_map": {"a": "s2.safetensors", "b": "s1.safetensors"}},
        {"s1.safetensors": shard_a, "s2.safetensors": shard_b}, "but the weight_map says")
sharded("sharded_bad_shard", {"weight_map": {"a": "s1.safetensors"}},
        {"s1.safetensors": b"\x00\x01"}, "too short for the 8-byte header length")
sharded("sharded_duplicate", {"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}},
        {"s1.safetensors": shard_a, "s2.safetensors": st_bytes(merge(f32("a", [2], 0, 8),
                                                                    f32("b", [2], 8, 16)),
                                                              b"\0" * 16)},
        "is defined twice")
sharded("folder_without_model", None, {"readme.txt": b"hello"}, "holds none of model.safetensors")

# ---- datasets: IDX (plain and gzip), digits CSV, images. The test runner picks the reader
# by name: *.idx / *.idx.gz -> IDX, *.csv / *.csv.gz -> digits CSV, *.png / *.jpg -> image.
import gzip
import zlib


def idx(dims, data, type_code=0x08):
    return bytes([0, 0, type_code, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


good_idx = idx([2, 2, 2], bytes(range(8)))
case("idx_bad_magic.idx", b"\x01\x00\x08\x03" + good_idx[4:], "bad magic number")
case("idx_float_type.idx", idx([2, 2, 2], b"\0" * 32, 0x0D), "only unsigned bytes")
case("idx_zero_dims.idx", idx([], b""), "IDX with 0 dimensions")
case("idx_five_dims.idx", idx([1, 1, 1, 1, 1], b"\0"), "IDX with 5 dimensions")
case("idx_short_header.idx", good_idx[:9], "IDX header is truncated")
case("idx_short_data.idx", good_idx[:-1], "need 8 data bytes, the file has 7")
case("idx_long_data.idx", good_idx + b"\0", "need 8 data bytes, the file has 9")
case("idx_huge_dims.idx", idx([65536, 65536, 65536], b""), "describe more than")
case("idx_truncated.idx.gz", gzip.compress(good_idx)[:-12], "gzip data ends early")
corrupt = bytearray(gzip.compress(idx([4, 8, 8], bytes(256))))
corrupt[12] ^= 0xFF
corrupt[13] ^= 0xFF
case("idx_corrupt.idx.gz", bytes(corrupt), "corrupt gzip data")
case("idx_gzip_garbage.idx.gz", gzip.compress(good_idx) + b"junk", "garbage after the gzip data")
bomb = gzip.compress(idx([1], b"") + b"\0" * (1 << 20))  # inflates fine, then fails the size check
case("idx_gzip_size_mismatch.idx.gz", bomb, "need 1 data bytes")
row = ",".join(["0"] * 64) + ",3\n"
case("digits_short_row.csv", (row + "1,2,3\n").encode(), "line 2 has 3 values, expected 65")
case("digits_pixel_range.csv", ("17," + ",".join(["0"] * 63) + ",1\n").encode(), "a pixel value in 0..16")
case("digits_label_range.csv", (",".join(["0"] * 64) + ",12\n").encode(), "a label in 0..9")
case("digits_text.csv", b"hello,world\n", "line 1, column 1")
case("digits_long_row.csv", (",".join(["0"] * 64) + ",1,5\n").encode(), "more than 65 values")
case("digits_empty.csv.gz", gzip.compress(b""), "no rows")
case("digits_truncated.csv.gz", gzip.compress(row.encode() * 50)[:-20], "gzip data ends early")


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(w, h, raw, ihdr_extra=b"\x08\x00\x00\x00\x00"):
    sig = b"\x89PNG\r\n\x1a\n"
    return (sig + png_chunk(b"IHDR", struct.pack(">II", w, h) + ihdr_extra)
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


case("image_not_an_image.png", b"this is not a picture", "not a readable image")
case("image_huge.png", png(20000, 20000, b""), "larger than allowed")
case("image_truncated.png", png(4, 4, b"\0" * 20)[:40], "corrupt image")
case("image_bad_pixels.png", png(4, 4, b"\x07" * 3), "corrupt image")
case("image_jpeg_garbage.jpg", b"\xff\xd8\xff\xe0" + b"\x00" * 30, "image")
# found by fuzz_image: a 2x2 PNG whose data made the decoder ask for 2 GB; a 70-byte BMP
# that claims 10240 x 5122 pixels (took 14 s under ASan before the size limit was lowered)
import base64
# found by fuzz_image: an empty IDAT chunk made stb_image compute NULL + 0 (undefined behaviour)
empty_idat = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">II", 2, 2) + b"\x08\x00\x00\x00\x00")
              + png_chunk(b"IDAT", b"") + png_chunk(b"IDAT", zlib.compress(b"\0" * 6)) + png_chunk(b"IEND", b""))
case("image_fuzz_empty_idat.png", empty_idat, "empty IDAT chunk")
case("image_fuzz_empty_idat_no_crc.png", base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAMAAAACCAAAAAABAAAAAAAAAElEQVRgZA=="), "empty IDAT chunk")
# found by fuzz_image: a DHT table whose 16 code counts sum past 256 made stb_image write past
# its Huffman arrays
dht = bytes([0x00]) + bytes([255, 255] + [0] * 14) + bytes(range(256)) * 2
bad_jpeg = (b"\xff\xd8" + b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht + b"\xff\xd9")
case("image_fuzz_huffman_overflow.jpg", bad_jpeg, "Huffman table with more than 256")
# the same, found again behind 0xFF fill bytes before the SOI marker (stb skips them)
case("image_fuzz_huffman_after_fill.jpg", base64.b64decode("////2P/E7/kAAAAAAAEDAH9+fs+BgYGBgQAAAAACCAIAAA=="), "Huffman table")
case("image_fuzz_alloc_bomb.png", base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4AAAADUlIRFIAAAACAAAAAggCAAAAmgAA/XMA1BZJREFUeGScn5+b2JmdZE8AAE5OTk5OTk5OTk5OTk68Tk5OTk5OTk5OTk5OTk5OTk5OTk5OTk7VSwAAAAAAAAAAAAAAAElFTkSuQmCC"), "decoding needs more than")
case("image_fuzz_huge.bmp", base64.b64decode("Qk1GAAAAAAAAADYAAAAoAAAAACgAAAIUAAABABAAAAAAABAAAAATCwAAEwsAAAAA////AAAS"), "larger than allowed")

with open(os.path.join(HERE, "expected.txt"), "w") as f:
    f.write("# file<TAB>text its error must contain (written by tests/data/make_bad.py)\n")
    for name, expect in cases:
        f.write(f"{name}\t{expect}\n")
print(f"make_bad: {len(cases)} cases in {HERE}")
