// Submit one signed XCM transfer from Alice on a local chopsticks chain; print the result as JSON.
//
//   NODE_PATH=.localnet/npm/node_modules node transfer.cjs '{"kind":"dmp","url":"ws://127.0.0.1:8100","dest":1000,"amount":"5000000000000"}'
//
// kind: dmp  relay XcmPallet.limited_teleport_assets to para `dest`
//       ump  para PolkadotXcm.limited_teleport_assets to the relay
//       xcmp para PolkadotXcm.limited_reserve_transfer_assets to sibling `dest`
// Output (last stdout line): {"blockHash","blockNumber","extrinsicHash","events":["Pallet.Event",...]}
//
// Driven from tests/localnet/network.py. The polkadot.js packages come with chopsticks, so no
// other download is needed (see network.py for why signing is not done in Python).
'use strict';

const { ApiPromise, WsProvider } = require('@polkadot/api');
const { Keyring } = require('@polkadot/keyring');
const { cryptoWaitReady } = require('@polkadot/util-crypto');

// Alice's balance after funding: 10^18 planck, far above any transfer plus fees.
const FUNDS = 10n ** 18n;

function beneficiary(parents, publicKey) {
  // XCM v1 shapes: the old runtimes here (rococo 9140, statemine 900) accept V0/V1 (and V2).
  return { V1: { parents, interior: { X1: { AccountId32: { network: 'Any', id: publicKey } } } } };
}

function relayToken(parents, amount) {
  return { V1: [{ id: { Concrete: { parents, interior: 'Here' } }, fun: { Fungible: amount } }] };
}

function buildCall(api, request, bob) {
  const amount = BigInt(request.amount);
  switch (request.kind) {
    case 'dmp':
      return api.tx.xcmPallet.limitedTeleportAssets(
        { V1: { parents: 0, interior: { X1: { Parachain: request.dest } } } },
        beneficiary(0, bob.publicKey),
        relayToken(0, amount),
        0,
        'Unlimited',
      );
    case 'ump':
      return api.tx.polkadotXcm.limitedTeleportAssets(
        { V1: { parents: 1, interior: 'Here' } },
        beneficiary(0, bob.publicKey),
        relayToken(1, amount),
        0,
        'Unlimited',
      );
    case 'xcmp':
      return api.tx.polkadotXcm.limitedReserveTransferAssets(
        { V1: { parents: 1, interior: { X1: { Parachain: request.dest } } } },
        beneficiary(0, bob.publicKey),
        relayToken(1, amount),
        0,
        'Unlimited',
      );
    default:
      throw new Error(`unknown kind ${request.kind}`);
  }
}

async function fund(api, provider, alice) {
  // dev_setStorage writes the head's state without a block. Keep the nonce: resetting it would
  // make the next transaction reuse one that a block already carries.
  const account = await api.query.system.account(alice.address);
  if (account.data.free.toBigInt() >= FUNDS / 10n) return;
  await provider.send('dev_setStorage', [
    {
      System: {
        Account: [
          [
            [alice.address],
            // Balances as strings: chopsticks rejects JS numbers above 2^53.
            { nonce: account.nonce.toNumber(), providers: 1, data: { free: FUNDS.toString() } },
          ],
        ],
      },
    },
  ]);
}

function submit(api, call, alice) {
  return new Promise((resolve, reject) => {
    // Immortal era: no dependence on which block the mortality checkpoint refers to.
    call
      .signAndSend(alice, { era: 0 }, (result) => {
        const { status, events, dispatchError } = result;
        if (status.isInvalid || status.isDropped || status.isUsurped) {
          reject(new Error(`transaction ${status.type}`));
        } else if (status.isInBlock || status.isFinalized) {
          const blockHash = (status.isInBlock ? status.asInBlock : status.asFinalized).toHex();
          if (dispatchError) {
            let detail = dispatchError.toString();
            if (dispatchError.isModule) {
              const meta = api.registry.findMetaError(dispatchError.asModule);
              detail = `${meta.section}.${meta.name}`;
            }
            reject(new Error(`extrinsic failed in ${blockHash}: ${detail}`));
            return;
          }
          resolve({
            blockHash,
            extrinsicHash: call.hash.toHex(),
            events: events.map(({ event }) => `${event.section}.${event.method}`),
          });
        }
      })
      .catch(reject);
  });
}

async function main() {
  const request = JSON.parse(process.argv[2]);
  await cryptoWaitReady();
  const keyring = new Keyring({ type: 'sr25519' });
  const alice = keyring.addFromUri('//Alice');
  const bob = keyring.addFromUri('//Bob');
  const provider = new WsProvider(request.url, false);
  await provider.connect();
  const api = await ApiPromise.create({ provider, noInitWarn: true, throwOnConnect: true });
  try {
    await fund(api, provider, alice);
    const sent = await submit(api, buildCall(api, request, bob), alice);
    const header = await api.rpc.chain.getHeader(sent.blockHash);
    sent.blockNumber = header.number.toNumber();
    process.stdout.write(`${JSON.stringify(sent)}\n`);
  } finally {
    await api.disconnect();
  }
}

main().then(
  () => process.exit(0),
  (error) => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
  },
);
