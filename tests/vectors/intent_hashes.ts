// Makes intent_hashes.json with the engine's reference code
// (@abloatai/transaction 0.49.0, Abloatai/ablo commit 9e70905), not ours:
// each case's operations are parsed as the reference parses a commit it
// serves (changeSetSchema), then hashed by its sourceChangeIntentHash. Cases
// are raw JSON text, so numbers reach the reference as JSON.parse reads them.
//
// In a clone of Abloatai/ablo at that commit, with zod 4.4.3 installed where
// the package can find it and this file copied to gen/intent_hashes.ts:
//   npx esbuild gen/intent_hashes.ts --bundle --platform=node --format=esm --outfile=gen/out.mjs
//   node gen/out.mjs   # the "cases" array of intent_hashes.json
import { changeSetSchema } from '../packages/transaction/src/source/contract.js';
import { sourceChangeIntentHash } from '../packages/transaction/src/source/idempotency.js';

const cases: Array<{ name: string; raw: string }> = [
  { name: 'without claimId', raw: '[{"type":"UPDATE","model":"task","id":"t1","input":{"done":true},"transactionId":"tx_1"}]' },
  { name: 'with claimId', raw: '[{"type":"UPDATE","model":"task","id":"t1","input":{"done":true},"transactionId":"tx_1","claimId":"clm_1"}]' },
  { name: 'claimId null', raw: '[{"type":"UPDATE","model":"task","id":"t1","input":{"done":true},"transactionId":"tx_1","claimId":null}]' },
  { name: 'claimId with the write guard', raw: '[{"type":"UPDATE","model":"task","id":"t1","input":{"done":true},"readAt":42,"onStale":"notify","claimId":"clm_1"}]' },
  { name: 'bypass and fenceToken are not a source\'s', raw: '[{"type":"UPDATE","model":"task","id":"t1","input":{"done":true},"claimId":"clm_1","bypass":true,"fenceToken":7}]' },
  { name: 'unknown keys are dropped', raw: '[{"type":"DELETE","model":"task","id":"t1","someday":{"x":1}}]' },
  { name: 'a model name as the public clients send it', raw: '[{"type":"CREATE","model":"workitems","id":"w1","input":{"title":"a"},"claimId":"clm_9"}]' },
  { name: 'several operations, nulls kept', raw: '[{"type":"CREATE","model":"task","id":null,"input":{"id":"t9","title":null}},{"type":"DELETE","model":"task","id":"t2","claimId":"clm_2","input":null}]' },
  { name: 'numbers as JavaScript writes them', raw: '[{"type":"UPDATE","model":"m","id":"1","input":{"a":1.0,"b":1e21,"c":1.5e-7,"d":12345678901234567890,"e":-0,"f":100,"g":0.1,"h":123456789012345678901234567890,"i":9007199254740993,"j":-1e-7,"k":5e-324}}]' },
  { name: 'numbers beyond a double', raw: '[{"type":"UPDATE","model":"m","id":"1","input":{"a":1e400,"b":-1e400,"c":9999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999999}}]' },
  { name: 'keys in UTF-16 order', raw: '[{"type":"UPDATE","model":"m","id":"1","input":{"\\uffff":1,"\\ud83d\\ude00":2,"a":3,"B":4,"\\u00e9":5}}]' },
  { name: 'strings as JSON.stringify writes them', raw: '[{"type":"UPDATE","model":"m","id":"1","input":{"s":"line\\nbreak \\u2028 \\u0001 \\u007f \\u00e9 \\"q\\" \\\\ / \\t","lone":"a\\ud800b","astral":"\\ud83d\\ude00"}}]' },
  { name: 'nested input', raw: '[{"type":"UPDATE","model":"m","id":"1","input":{"tags":["b","a"],"meta":{"z":1,"a":[{"y":2,"b":1},[],{}]}}}]' },
  { name: 'readAt written as 2e2', raw: '[{"type":"UPDATE","model":"m","id":"1","readAt":2e2,"claimId":"clm_1"}]' },
  { name: 'readAt 0', raw: '[{"type":"ARCHIVE","model":"m","id":"1","readAt":0}]' },
  { name: 'claimId empty', raw: '[{"type":"UPDATE","model":"m","id":"1","claimId":""}]' },
  { name: 'claimId not a string', raw: '[{"type":"UPDATE","model":"m","id":"1","claimId":5}]' },
  { name: 'readAt with a fraction', raw: '[{"type":"UPDATE","model":"m","id":"1","readAt":1.5}]' },
  { name: 'readAt negative', raw: '[{"type":"UPDATE","model":"m","id":"1","readAt":-1}]' },
  { name: 'readAt as a string', raw: '[{"type":"UPDATE","model":"m","id":"1","readAt":"5"}]' },
];

const out = cases.map(({ name, raw }) => {
  const parsed = changeSetSchema.safeParse({ operations: JSON.parse(raw), correlationId: 'c_1' });
  if (!parsed.success) return { name, raw, accepted: false };
  return { name, raw, accepted: true, intentHash: sourceChangeIntentHash(parsed.data) };
});
console.log(JSON.stringify(out, null, 1));
