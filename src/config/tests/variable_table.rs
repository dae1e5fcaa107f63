//! The table of variables agrees with the file's structs.

use super::*;

/// The field names serde knows for struct `T`.
fn struct_fields<T: for<'de> Deserialize<'de>>() -> Vec<&'static str> {
    struct Capture<'a>(&'a mut Vec<&'static str>);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only structs are inspected"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.extend_from_slice(fields);
            Err(de::Error::custom("fields captured"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
            enum identifier ignored_any
        }
    }
    let mut fields = Vec::new();
    let _ = T::deserialize(Capture(&mut fields));
    fields
}

#[test]
fn every_file_key_of_a_plain_section_can_be_set_by_a_variable() {
    let sections = [
        ("server", struct_fields::<raw::RawServer>()),
        ("upstream", struct_fields::<raw::RawUpstream>()),
        ("access", struct_fields::<raw::RawAccess>()),
        ("log", struct_fields::<raw::RawLog>()),
        ("tracing", struct_fields::<raw::RawTracing>()),
    ];
    for (section, fields) in sections {
        let (_, table) = env::SECTION_KEYS
            .iter()
            .find(|(name, _)| *name == section)
            .unwrap_or_else(|| panic!("{section} missing from SECTION_KEYS"));
        let table: Vec<&str> = table.iter().map(|(key, _)| *key).collect();
        assert_eq!(fields, table, "[{section}]");
    }
    assert_eq!(struct_fields::<raw::RawCredential>(), env::CREDENTIAL_KEYS);
}
