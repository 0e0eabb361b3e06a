//! What a user sees when an attribute is misused: each case in `tests/ui` must fail to
//! compile with the message next to it (`TRYBUILD=overwrite` rewrites the messages after a
//! deliberate change; read the diff).

#[test]
fn misused_attributes_fail_with_a_message_that_names_the_fix() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
