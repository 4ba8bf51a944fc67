"""The ``kms`` key provider: data keys wrapped by a key of AWS KMS (or a server speaking
its API), through boto3 — imported here and nowhere else in cargohold/keys/.

Wrap is KMS ``Encrypt`` of the 32-byte data key under ``key_ref`` (a key id, ARN or alias),
unwrap is ``Decrypt``; both with the encryption context ``{"cargohold-encryption-id": ID}``,
so a wrapped key moved onto another volume's record does not decrypt. The blob is KMS's
ciphertext, opaque. Credentials come from boto3's usual chain (environment, the pod's
service account role, ~/.aws); the manager never stores them. Short timeouts and two tries:
an unreachable KMS is a ``KeyUnavailable`` within seconds, not a hung request.
"""

from __future__ import annotations

from typing import Any

from cargohold.errors import InvalidArgument, KeyRefused, KeyUnavailable
from cargohold.keys.data_keys import DATA_KEY_BYTES, DataKey, WrappedKey, check_id
from cargohold.keys.providers import KMS

CONTEXT_KEY = "cargohold-encryption-id"
MAX_KEY_REF = 2048
REFUSED = {"InvalidCiphertextException", "IncorrectKeyException"}


def check_key_id(key_ref: str) -> str:
    if not isinstance(key_ref, str) or not key_ref or len(key_ref) > MAX_KEY_REF:
        raise InvalidArgument(f"KMS key id {key_ref!r} is not valid: 1-{MAX_KEY_REF} characters")
    if any(c.isspace() or not c.isprintable() for c in key_ref):
        raise InvalidArgument(f"KMS key id {key_ref!r} is not valid: no spaces or control codes")
    return key_ref


class KmsProvider:
    name = KMS

    def __init__(
        self,
        endpoint: str | None = None,
        region: str | None = None,
        timeout: float = 5.0,
        client: Any = None,
    ) -> None:
        self.endpoint = endpoint
        self.region = region or "us-east-1"
        self.timeout = timeout
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # type: ignore[import-untyped]
            from botocore.config import Config  # type: ignore[import-untyped]

            cfg = Config(
                connect_timeout=self.timeout,
                read_timeout=self.timeout,
                retries={"max_attempts": 2, "mode": "standard"},
            )
            self._client = boto3.session.Session().client(
                "kms", endpoint_url=self.endpoint, region_name=self.region, config=cfg
            )
        return self._client

    def _where(self) -> str:
        return self.endpoint or f"AWS KMS in {self.region}"

    def _call(self, key_ref: str, op: str, **kw: Any) -> dict[str, Any]:
        import botocore.exceptions  # type: ignore[import-untyped]

        try:
            out: dict[str, Any] = getattr(self.client, op)(**kw)
            return out
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            code, msg = str(err.get("Code", "")), str(err.get("Message", ""))
            if code in REFUSED:
                raise KeyRefused(
                    f"KMS key {key_ref!r} refused the wrapped data key ({code}): another key, "
                    "or a tampered record"
                ) from None
            raise KeyUnavailable(f"KMS key {key_ref!r} at {self._where()}: {code}: {msg}") from None
        except botocore.exceptions.BotoCoreError as e:
            raise KeyUnavailable(f"the KMS at {self._where()} cannot be used: {e}") from None

    def check(self, key_ref: str) -> None:
        check_key_id(key_ref)
        meta = self._call(key_ref, "describe_key", KeyId=key_ref).get("KeyMetadata", {})
        state = meta.get("KeyState", "Enabled")
        if state != "Enabled":
            raise KeyUnavailable(f"KMS key {key_ref!r} is {state}, not Enabled")

    def wrap(self, dek: DataKey, key_ref: str, encryption_id: str) -> WrappedKey:
        check_key_id(key_ref)
        check_id(encryption_id)
        out = self._call(
            key_ref,
            "encrypt",
            KeyId=key_ref,
            Plaintext=dek.key,
            EncryptionContext={CONTEXT_KEY: encryption_id},
        )
        return WrappedKey(self.name, key_ref, bytes(out["CiphertextBlob"]))

    def unwrap(self, wrapped: WrappedKey, encryption_id: str) -> DataKey:
        check_id(encryption_id)
        out = self._call(
            wrapped.key_ref,
            "decrypt",
            KeyId=wrapped.key_ref,
            CiphertextBlob=wrapped.blob,
            EncryptionContext={CONTEXT_KEY: encryption_id},
        )
        key = bytes(out.get("Plaintext", b""))
        if len(key) != DATA_KEY_BYTES:
            raise KeyRefused(
                f"KMS key {wrapped.key_ref!r} returned {len(key)} bytes, not a data key"
            )
        return DataKey(key)
