"""The ingress network config: the shipped files, the model rules and the error messages.

Bad files are written to ``tmp_path``; the line each error must point at is marked in the text
with a ``# <-`` comment and found from the text, so a test and its file cannot drift apart.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydantic import ValidationError

from ocstream.errors import ConfigError
from ocstream.ingress.config import (
    IngressConfig,
    NetworkConfig,
    ReplayProvider,
    RpcProvider,
    load_ingress_config,
)

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"

RELAY = """\
[[networks]]
id = "urn:ocn:polkadot:0"
provider = { type = "rpc", url = "wss://rpc.ibp.network/polkadot" }
"""

ASSET_HUB = """\
[[networks]]
id = "urn:ocn:polkadot:1000"
relay = "urn:ocn:polkadot:0"
provider = { type = "rpc", url = "wss://polkadot-asset-hub-rpc.polkadot.io" }
"""

MARK = "# <-"


def write(tmp_path: Path, text: str, name: str = "ingress.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def marked_line(text: str) -> int:
    """The 1-based number of the one line carrying the ``# <-`` mark."""
    numbers = [n for n, line in enumerate(text.splitlines(), start=1) if MARK in line]
    assert len(numbers) == 1, f"the test file must mark exactly one line, found {numbers}"
    return numbers[0]


def rpc_urls(network: NetworkConfig) -> list[str]:
    assert isinstance(network.provider, RpcProvider), f"{network.id} is not on JSON-RPC"
    return network.provider.urls


def load_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_ingress_config(path)
    return path, str(caught.value)


# --- The shipped files -------------------------------------------------------------------


def test_minimal_config_is_the_polkadot_relay_and_asset_hub() -> None:
    config = load_ingress_config(CONFIG_DIR / "minimal.toml")
    assert [network.id for network in config.networks] == [
        "urn:ocn:polkadot:0",
        "urn:ocn:polkadot:1000",
    ]
    relay, asset_hub = config.networks
    assert relay.relay is None and relay.is_relay
    assert asset_hub.relay == "urn:ocn:polkadot:0" and asset_hub.para_id == 1000
    for network in config.networks:
        assert isinstance(network.provider, RpcProvider)
        # Two endpoints each, so that one operator's outage does not stop the ingress.
        assert len(network.provider.urls) == 2
        assert all(url.startswith("wss://") for url in network.provider.urls)


def test_polkadot_config_has_the_nine_chains_under_the_polkadot_relay() -> None:
    config = load_ingress_config(CONFIG_DIR / "polkadot.toml")
    para_ids = [0, 1000, 1002, 2000, 2004, 2006, 2030, 2032, 2034]
    assert [network.id for network in config.networks] == [
        f"urn:ocn:polkadot:{para_id}" for para_id in para_ids
    ]
    assert [network.para_id for network in config.networks] == para_ids
    assert config.networks[0].relay is None
    assert {network.relay for network in config.networks[1:]} == {"urn:ocn:polkadot:0"}
    assert {network.consensus for network in config.networks} == {"polkadot"}
    for network in config.networks:
        assert isinstance(network.provider, RpcProvider)
        assert 1 <= len(network.provider.urls) <= 2
        assert all(url.startswith("wss://") for url in network.provider.urls)


def test_localnet_config_is_the_offline_relay_and_two_paras_on_local_ports() -> None:
    config = load_ingress_config(CONFIG_DIR / "localnet.toml")
    assert [network.id for network in config.networks] == [
        "urn:ocn:local:0",
        "urn:ocn:local:1000",
        "urn:ocn:local:1001",
    ]
    assert config.networks[0].is_relay and config.networks[0].relay is None
    assert [network.relay for network in config.networks[1:]] == ["urn:ocn:local:0"] * 2
    assert [rpc_urls(network) for network in config.networks] == [
        ["ws://127.0.0.1:8100"],
        ["ws://127.0.0.1:8101"],
        ["ws://127.0.0.1:8102"],
    ]


@pytest.mark.parametrize("name", ["minimal.toml", "polkadot.toml", "localnet.toml"])
def test_shipped_files_do_not_pin_a_redis(name: str) -> None:
    # The worker's default is the embedded Redis; a shipped file must not silently override it.
    with (CONFIG_DIR / name).open("rb") as fh:
        document = tomllib.load(fh)
    assert "redis_url" not in document.get("worker", {})


# --- What parses ---------------------------------------------------------------------------


def test_a_string_url_and_a_list_of_urls_both_give_urls(tmp_path: Path) -> None:
    text = RELAY + ASSET_HUB.replace(
        'url = "wss://polkadot-asset-hub-rpc.polkadot.io"',
        'url = ["wss://polkadot-asset-hub-rpc.polkadot.io", "ws://10.0.0.2:9944"]',
    )
    config = load_ingress_config(write(tmp_path, text))
    relay, asset_hub = (network.provider for network in config.networks)
    assert isinstance(relay, RpcProvider) and isinstance(asset_hub, RpcProvider)
    assert relay.urls == ["wss://rpc.ibp.network/polkadot"]
    assert asset_hub.urls == ["wss://polkadot-asset-hub-rpc.polkadot.io", "ws://10.0.0.2:9944"]


def test_defaults_and_camel_case_keys(tmp_path: Path) -> None:
    text = RELAY + ASSET_HUB + "recovery = false\nbatchSize = 100\nmaxBlockDist = 7\n"
    relay, asset_hub = load_ingress_config(write(tmp_path, text)).networks
    assert (relay.recovery, relay.batch_size, relay.max_block_dist) == (True, 25, 50)
    assert (asset_hub.recovery, asset_hub.batch_size, asset_hub.max_block_dist) == (False, 100, 7)


def test_a_replay_provider_parses_with_its_file_relative_to_the_config(tmp_path: Path) -> None:
    text = RELAY.replace(
        'provider = { type = "rpc", url = "wss://rpc.ibp.network/polkadot" }',
        'provider = { type = "replay", file = "recordings/polkadot.jsonl", rate = 250 }',
    )
    (tmp_path / "conf").mkdir()
    config = load_ingress_config(write(tmp_path / "conf", text))
    provider = config.network("urn:ocn:polkadot:0").provider
    assert isinstance(provider, ReplayProvider)
    assert provider.file == tmp_path / "conf" / "recordings" / "polkadot.jsonl"
    assert provider.rate == 250.0


def test_replay_rate_defaults_to_ten_blocks_per_second_and_an_absolute_file_stays() -> None:
    provider = ReplayProvider(file=Path("/data/blocks.jsonl"))
    assert provider.rate == 10.0
    assert provider.file == Path("/data/blocks.jsonl")


def test_worker_and_transport_sections_are_left_to_the_worker(tmp_path: Path) -> None:
    text = "[worker]\nport = 3001\n\n[transport]\nmax_len = 10\n\n" + RELAY
    config = load_ingress_config(write(tmp_path, text))
    assert [network.id for network in config.networks] == ["urn:ocn:polkadot:0"]


def test_urn_properties() -> None:
    network = NetworkConfig(
        id="urn:ocn:my-net2:2034",
        relay="urn:ocn:my-net2:0",
        provider=RpcProvider(url="wss://example.org"),
    )
    assert (network.consensus, network.para_id, network.is_relay) == ("my-net2", 2034, False)


def test_network_lookup_by_urn() -> None:
    config = IngressConfig(
        networks=[NetworkConfig(id="urn:ocn:local:0", provider=RpcProvider(url="ws://h:1"))]
    )
    assert config.network("urn:ocn:local:0").id == "urn:ocn:local:0"
    with pytest.raises(KeyError, match=r"urn:ocn:local:1000.*not configured.*urn:ocn:local:0"):
        config.network("urn:ocn:local:1000")


def test_models_are_frozen() -> None:
    network = NetworkConfig(id="urn:ocn:local:0", provider=RpcProvider(url="ws://h:1"))
    with pytest.raises(ValidationError, match="frozen"):
        network.batch_size = 3


def test_the_relay_check_holds_without_the_loader() -> None:
    with pytest.raises(ValidationError, match="relay urn:ocn:local:0 is not declared"):
        IngressConfig(
            networks=[
                NetworkConfig(
                    id="urn:ocn:local:1000",
                    relay="urn:ocn:local:0",
                    provider=RpcProvider(url="ws://h:1"),
                )
            ]
        )


# --- What is refused, and where the message points -----------------------------------------

BAD_FILES = {
    "uppercase consensus": (
        RELAY
        + ASSET_HUB.replace('id = "urn:ocn:polkadot:1000"', f'id = "urn:ocn:Polkadot:1000" {MARK}'),
        "networks[1].id",
        "expected urn:ocn:<consensus>:<paraId>",
    ),
    "not an ocn urn": (
        RELAY.replace('id = "urn:ocn:polkadot:0"', f'id = "polkadot" {MARK}'),
        "networks[0].id",
        "got 'polkadot'",
    ),
    "paraId with a leading zero": (
        RELAY + ASSET_HUB.replace('"urn:ocn:polkadot:1000"', f'"urn:ocn:polkadot:01000" {MARK}'),
        "networks[1].id",
        "without leading zeros",
    ),
    "parachain without relay": (
        RELAY
        + ASSET_HUB.replace("[[networks]]", f"[[networks]] {MARK}").replace(
            'relay = "urn:ocn:polkadot:0"\n', ""
        ),
        "networks[1].relay",
        'needs relay = "urn:ocn:polkadot:0"',
    ),
    "relay chain with a relay": (
        RELAY.replace(
            'id = "urn:ocn:polkadot:0"\n',
            f'id = "urn:ocn:polkadot:0"\nrelay = "urn:ocn:polkadot:0" {MARK}\n',
        ),
        "networks[0].relay",
        "is a relay chain (paraId 0): remove its relay",
    ),
    "relay that is a parachain": (
        RELAY
        + ASSET_HUB.replace(
            'relay = "urn:ocn:polkadot:0"', f'relay = "urn:ocn:polkadot:2000" {MARK}'
        ),
        "networks[1].relay",
        "a relay chain has paraId 0",
    ),
    "relay of another consensus": (
        RELAY
        + ASSET_HUB.replace('relay = "urn:ocn:polkadot:0"', f'relay = "urn:ocn:kusama:0" {MARK}'),
        "networks[1].relay",
        "the relay must be in the network's consensus ('polkadot')",
    ),
    "relay not declared": (
        RELAY
        + ASSET_HUB.replace("polkadot:1000", "kusama:1000").replace(
            'relay = "urn:ocn:polkadot:0"', f'relay = "urn:ocn:kusama:0" {MARK}'
        ),
        "networks[1].relay",
        "relay urn:ocn:kusama:0 is not declared in this file",
    ),
    "duplicate ids": (
        RELAY
        + ASSET_HUB
        + ASSET_HUB.replace('id = "urn:ocn:polkadot:1000"', f'id = "urn:ocn:polkadot:1000" {MARK}'),
        "networks[2].id",
        "duplicate network id: urn:ocn:polkadot:1000 is networks[1]",
    ),
    "unknown network key, snake case": (
        RELAY + ASSET_HUB + f"batch_size = 10 {MARK}\n",
        "networks[1].batch_size",
        "unknown key; did you mean batchSize?",
    ),
    "unknown provider key": (
        RELAY
        + ASSET_HUB.replace(
            'provider = { type = "rpc", url = "wss://polkadot-asset-hub-rpc.polkadot.io" }',
            f'provider = {{ type = "rpc", url = "wss://a.example", timeout = 3 }} {MARK}',
        ),
        "networks[1].provider.timeout",
        "unknown key",
    ),
    "unknown top-level key": (
        RELAY + f"\n[database] {MARK}\nurl = 'x'\n",
        "database",
        "unknown top-level key",
    ),
    "http url": (
        RELAY
        + ASSET_HUB.replace(
            'url = "wss://polkadot-asset-hub-rpc.polkadot.io" }',
            f'url = "https://polkadot-asset-hub-rpc.polkadot.io" }} {MARK}',
        ),
        "networks[1].provider.url",
        "value must start with ws:// or wss://",
    ),
    "bad url in a list, in a provider sub-table": (
        RELAY
        + "[[networks]]\n"
        + 'id = "urn:ocn:polkadot:2000"\n'
        + 'relay = "urn:ocn:polkadot:0"\n'
        + "[networks.provider]\n"
        + 'type = "rpc"\n'
        + f"url = [ {MARK}\n"
        + '  "wss://acala-rpc-0.aca-api.network",\n'
        + '  "tcp://10.0.0.2:9944",\n'
        + "]\n",
        "networks[1].provider.url[1]",
        "value must start with ws:// or wss://, got 'tcp://10.0.0.2:9944'",
    ),
    "empty url list": (
        RELAY.replace('url = "wss://rpc.ibp.network/polkadot" }', f"url = [] }} {MARK}"),
        "networks[0].provider.url",
        "at least one URL is required",
    ),
    "unknown provider type": (
        RELAY.replace(
            'provider = { type = "rpc", url = "wss://rpc.ibp.network/polkadot" }',
            f'provider = {{ type = "smoldot", url = "wss://rpc.ibp.network/polkadot" }} {MARK}',
        ),
        "networks[0].provider.type",
        "'rpc', 'replay'",
    ),
    "provider without a type, as a sub-table": (
        RELAY.replace(
            'provider = { type = "rpc", url = "wss://rpc.ibp.network/polkadot" }',
            f'[networks.provider] {MARK}\nurl = "wss://rpc.ibp.network/polkadot"',
        ),
        "networks[0].provider.type",
        "required key is missing",
    ),
    "batchSize 0": (
        RELAY + ASSET_HUB + f"batchSize = 0 {MARK}\n",
        "networks[1].batchSize",
        "greater than or equal to 1",
    ),
    "batchSize above 1000": (
        RELAY + ASSET_HUB + f"batchSize = 1001 {MARK}\n",
        "networks[1].batchSize",
        "less than or equal to 1000",
    ),
    "maxBlockDist as a string": (
        RELAY + f'maxBlockDist = "50" {MARK}\n',
        "networks[0].maxBlockDist",
        "valid integer",
    ),
    "replay rate 0": (
        RELAY.replace(
            'provider = { type = "rpc", url = "wss://rpc.ibp.network/polkadot" }',
            f'provider = {{ type = "replay", file = "blocks.jsonl", rate = 0 }} {MARK}',
        ),
        "networks[0].provider.rate",
        "greater than 0",
    ),
    "no networks": (
        f"# a worker config without networks {MARK}\n[worker]\nport = 3000\n",
        "networks",
        "required key is missing",
    ),
}


@pytest.mark.parametrize(
    ("text", "field", "message"), list(BAD_FILES.values()), ids=list(BAD_FILES)
)
def test_bad_file_names_file_line_and_field(
    tmp_path: Path, text: str, field: str, message: str
) -> None:
    path, error = load_error(tmp_path, text)
    prefix = f"{path}:{marked_line(text)}: {field}: "
    assert error.startswith(prefix), f"expected {prefix!r}…, got {error!r}"
    assert message in error.splitlines()[0]


def test_the_documented_message_format(tmp_path: Path) -> None:
    text = RELAY + ASSET_HUB.replace('url = "wss://', 'url = "http://')
    path, error = load_error(tmp_path, text)
    line = text.splitlines().index(
        'provider = { type = "rpc", url = "http://polkadot-asset-hub-rpc.polkadot.io" }'
    )
    assert error == (
        f"{path}:{line + 1}: networks[1].provider.url: value must start with ws:// or wss://, "
        "got 'http://polkadot-asset-hub-rpc.polkadot.io'"
    )


def test_toml_syntax_error_keeps_tomllib_line(tmp_path: Path) -> None:
    text = RELAY + ASSET_HUB.replace('relay = "urn:ocn:polkadot:0"', f"relay = urn:ocn {MARK}")
    path, error = load_error(tmp_path, text)
    line = marked_line(text)
    assert error.startswith(f"{path}:{line}: not valid TOML: ")
    assert f"(at line {line}, column" in error


def line_containing(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    text = "[extra]\n\n" + RELAY + ASSET_HUB.replace("wss://", "https://") + "batchSize = 0\n"
    path, error = load_error(tmp_path, text)
    assert error.splitlines() == [
        f"{path}:1: extra: unknown top-level key: the file holds [[networks]] tables, and "
        "[worker] and [transport] for the worker",
        f"{path}:{line_containing(text, 'https://')}: networks[1].provider.url: value must "
        "start with ws:// or wss://, got 'https://polkadot-asset-hub-rpc.polkadot.io'",
        f"{path}:{line_containing(text, 'batchSize = 0')}: networks[1].batchSize: "
        "Input should be greater than or equal to 1",
    ]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=f"{path}: no such config file"):
        load_ingress_config(path)
