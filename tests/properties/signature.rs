use super::*;
use ed25519_dalek::SigningKey;
use imprint::format::signature::*;

fn release() -> impl Strategy<Value = Release> {
    (
        NAME,
        NAME,
        digest(),
        any::<u64>(),
        any::<u64>(),
        prop::option::of(any::<u64>()),
    )
        .prop_map(|(name, tag, digest, size, issued, expires)| Release {
            name,
            tag,
            digest,
            size,
            issued,
            expires,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn signed_lines_verify_as_their_release(seed in any::<[u8; 32]>(), r in release()) {
        let key = SigningKey::from_bytes(&seed);
        let line = sign_line(&key, &r);
        let wanted = Wanted::Tag { name: &r.name, tag: &r.tag };
        prop_assert_eq!(verify(&line, &r.digest, &key.verifying_key(), wanted), Ok(r.clone()));
        let any = verify(&line, &r.digest, &key.verifying_key(), Wanted::Any);
        prop_assert_eq!(any, Ok(r.clone()));
        prop_assert_eq!(without(&line, &key.verifying_key(), &r.tag), "");
        let public = parse_public_key(&public_key_text(&key.verifying_key()));
        prop_assert_eq!(public, Ok(key.verifying_key()));
        let secret = parse_secret_key(&secret_key_text(&key)).map(|k| k.to_bytes());
        prop_assert_eq!(secret, Ok(seed));
    }

    #[test]
    fn a_mutated_line_never_verifies_as_another_release(
        seed in any::<[u8; 32]>(),
        r in release(),
        ms in mutations(),
    ) {
        let key = SigningKey::from_bytes(&seed);
        let line = mutate(sign_line(&key, &r).as_bytes(), &ms);
        let text = String::from_utf8_lossy(&line);
        let key = key.verifying_key();
        let got = bounded(line.len(), || verify(&text, &r.digest, &key, Wanted::Any));
        if let Ok(got) = got {
            prop_assert_eq!(got, r);
        }
    }

    #[test]
    fn arbitrary_text_never_panics(
        seed in any::<[u8; 32]>(),
        text in ".{0,400}",
        bytes in bytes(),
    ) {
        let key = SigningKey::from_bytes(&seed).verifying_key();
        let d = imprint::format::digest::Digest([0; 32]);
        let lossy = String::from_utf8_lossy(&bytes);
        for text in [text.as_str(), &lossy] {
            let _ = bounded(text.len(), || verify(text, &d, &key, Wanted::Any));
            let _ = without(text, &key, "v1");
            let _ = parse_public_key(text);
            let _ = parse_secret_key(text);
        }
    }

    #[test]
    fn lines_of_the_right_shape_never_panic(
        seed in any::<[u8; 32]>(),
        fields in vec("[A-Za-z0-9+/=]{0,90}|[0-9]{1,22}|ed25519(-v2)?", 0..9),
    ) {
        let key = SigningKey::from_bytes(&seed).verifying_key();
        let text = format!("ed25519-v2 {}\n{}\n", fields.join(" "), fields.join(" "));
        let d = imprint::format::digest::Digest([0; 32]);
        let _ = verify(&text, &d, &key, Wanted::Tag { name: "a", tag: "b" });
    }
}
