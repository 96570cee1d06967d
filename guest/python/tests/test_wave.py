"""WAVE: what poolhost.wave writes wasm-wave reads, and it reads what wasm-wave writes."""

import math
import unittest

import support  # noqa: F401, puts poolhost on sys.path
from poolhost.wave import decode, encode

OPTIONAL_INTS = ("list", ("option", "s64"))


class RoundTrip(unittest.TestCase):
    def test_values_round_trip(self):
        cases = [
            (0, "s64"),
            (-(2**63), "s64"),
            (1.5, "f64"),
            (-0.0, "f64"),
            (1e300, "f64"),
            (5e-324, "f64"),
            (True, "bool"),
            (False, "bool"),
            ("", "string"),
            ('tab\there "quoted" \\ \x01 \x7f é 😀 \u200b', "string"),
            (b"\x00\xff", "bytes"),
            ([1, None, -3], OPTIONAL_INTS),
            ((1, "a", [b"x"]), ("tuple", "s64", "string", ("list", "bytes"))),
            ([], ("list", "string")),
            (None, ("option", ("tuple", "s64", "f64"))),
        ]
        for value, type in cases:
            with self.subTest(value=value):
                text = encode(value, type)
                self.assertEqual(decode(text, type), value, f"through `{text}`")

    def test_floats_that_json_lacks(self):
        self.assertEqual(encode(math.inf, "f64"), "inf")
        self.assertEqual(encode(-math.inf, "f64"), "-inf")
        self.assertEqual(encode(math.nan, "f64"), "nan")
        self.assertTrue(math.isnan(decode("nan", "f64")))
        self.assertEqual(decode("-inf", "f64"), -math.inf)


class Encode(unittest.TestCase):
    def test_spelling(self):
        self.assertEqual(encode("a\nb\"c'", "string"), r'"a\nb\"c' + "'" + '"')
        self.assertEqual(encode("\x00", "string"), r'"\u{0}"')
        self.assertEqual(encode(b"hi", "bytes"), "[104, 105]")
        self.assertEqual(encode(bytearray(b"\x01"), "bytes"), "[1]")
        self.assertEqual(encode([1, None], OPTIONAL_INTS), "[some(1), none]")
        self.assertEqual(encode(range(3), ("list", "s64")), "[0, 1, 2]")
        self.assertEqual(encode(2, "f64"), "2.0")
        self.assertEqual(encode([1, "x"], ("tuple", "s64", "string")), '(1, "x")')

    def test_a_value_of_another_type_is_a_type_error(self):
        cases = [
            ("1", "s64"),
            (1.5, "s64"),
            ("1", "f64"),
            (1, "bool"),
            (b"x", "string"),
            ("x", "bytes"),
            ("abc", ("list", "string")),
            (5, ("list", "s64")),
            ((1,), ("tuple", "s64", "s64")),
            ([None], ("list", "s64")),
        ]
        for value, type in cases:
            with self.subTest(value=value, type=type), self.assertRaises(TypeError):
                encode(value, type)

    def test_the_error_names_the_python_type_expected(self):
        with self.assertRaisesRegex(TypeError, r"expected int, got 'x'"):
            encode(["x"], OPTIONAL_INTS)
        with self.assertRaisesRegex(TypeError, r"expected tuple\[int, str\], got \(1,\)"):
            encode((1,), ("tuple", "s64", "string"))


class Decode(unittest.TestCase):
    def test_what_wasm_wave_writes(self):
        self.assertEqual(decode(r'"\u{200b}\'\"\\"', "string"), "\u200b'\"\\")
        self.assertEqual(decode("[some(1), none]", OPTIONAL_INTS), [1, None])
        self.assertEqual(decode("-12", "s64"), -12)
        self.assertEqual(decode("100000000000000000000", "f64"), 1e20)
        self.assertEqual(decode("1e-7", "f64"), 1e-7)

    def test_forms_wasm_wave_also_reads(self):
        self.assertEqual(decode(" [ 1 , 2 , ] ", ("list", "s64")), [1, 2])
        self.assertEqual(decode("(1, 2,)", ("tuple", "s64", "s64")), (1, 2))
        self.assertEqual(decode("[7, none]", OPTIONAL_INTS), [7, None])
        self.assertEqual(decode('"flat"', ("option", "string")), "flat")
        self.assertEqual(decode("some ( true )", ("option", "bool")), True)
        self.assertEqual(decode('"a\nb"', "string"), "a\nb")

    def test_errors_say_what_was_expected_and_where(self):
        cases = [
            ("1 2", "s64", "the end of the value at column 3"),
            ("1.5", "s64", "an integer at column 1"),
            ("[256]", "bytes", "bytes from 0 to 255"),
            ("(1)", ("tuple", "s64", "s64"), "`,` at column 3"),
            ("(1, 2, 3)", ("tuple", "s64", "s64"), "`\\)` at column 8"),
            ("tru", "bool", "`true` or `false`"),
            ("some", ("option", "s64"), "`\\(` at column 5"),
            ('"open', "string", "a string at column 1"),
            ("[1, 2", ("list", "s64"), "`]` at column 6"),
            ("", "f64", "a float at column 1"),
        ]
        for text, type, expected in cases:
            with (
                self.subTest(text=text),
                self.assertRaisesRegex(ValueError, "expected " + expected),
            ):
                decode(text, type)

    def test_bad_escapes(self):
        for text in (r'"\q"', r'"\u{d800}"', r'"\u{110000}"'):
            with self.subTest(text=text), self.assertRaisesRegex(ValueError, "bad escape"):
                decode(text, "string")


if __name__ == "__main__":
    unittest.main()
