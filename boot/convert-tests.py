#!/usr/bin/env python3
"""Rewrites kernel tests of the old `#[test_case]` form into `#[kernel::test]` (in place).

    python3 boot/convert-tests.py tests/*.rs kernel/src/**/*.rs

- `#[test_case] fn name() { .. }`  ->  `#[kernel::test] fn name() { .. }`
- `#[test_case] static X: ShouldPanic = ShouldPanic::new("name", f).expecting("text");`
      ->  `#[kernel::test] #[should_panic(expected = "text")] fn name() { f(); }`
  (without `.expecting`: a bare `#[should_panic]`)
- `use kernel::testing::ShouldPanic;` is dropped.

Anything it cannot rewrite is left alone and reported; the compiler then names it (a
`#[test_case]` that is not `#[kernel::test]` does not compile). Run `cargo fmt` afterwards.
"""

import re
import sys

SHOULD_PANIC = re.compile(
    r'#\[test_case\]\s*\n'
    r'(?P<indent>[ \t]*)(?:pub(?:\([^)]*\))?\s+)?static\s+\w+\s*:\s*(?:kernel::testing::)?ShouldPanic\s*=\s*'
    r'(?:kernel::testing::)?ShouldPanic::new\(\s*"(?P<name>\w+)"\s*,\s*(?P<func>[\w:]+)\s*,?\s*\)'
    r'(?:\s*\.expecting\(\s*(?P<expected>"(?:[^"\\]|\\.)*")\s*,?\s*\))?\s*;',
    re.MULTILINE,
)
TEST_CASE_FN = re.compile(r'#\[test_case\](?P<gap>\s*\n[ \t]*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?fn\s)')
USE_SHOULD_PANIC = re.compile(r'^[ \t]*use kernel::testing::ShouldPanic;[ \t]*\n', re.MULTILINE)


def should_panic(m: re.Match) -> str:
    indent = m.group('indent')
    attr = f'#[should_panic(expected = {m.group("expected")})]' if m.group('expected') else '#[should_panic]'
    return (
        f'#[kernel::test]\n{indent}{attr}\n{indent}fn {m.group("name")}() {{\n'
        f'{indent}    {m.group("func")}();\n{indent}}}'
    )


def convert(text: str) -> str:
    text = SHOULD_PANIC.sub(should_panic, text)
    text = TEST_CASE_FN.sub(lambda m: '#[kernel::test]' + m.group('gap'), text)
    return USE_SHOULD_PANIC.sub('', text)


def main() -> int:
    left = 0
    for path in sys.argv[1:]:
        with open(path, encoding='utf-8') as f:
            old = f.read()
        new = convert(old)
        if new != old:
            with open(path, 'w', encoding='utf-8') as f:
                f.write(new)
            print(f'converted {path}')
        for n, line in enumerate(new.splitlines(), 1):
            if '#[test_case]' in line or re.search(r'\bShouldPanic\b', line):
                print(f'{path}:{n}: not converted, rewrite by hand: {line.strip()}', file=sys.stderr)
                left += 1
    return 1 if left else 0


if __name__ == '__main__':
    sys.exit(main())
