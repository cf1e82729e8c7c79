// hangar-secured-errors: an operation that needs a key declares 401 (no or bad key) and 403
// (key lacks a scope), so the SDK, the CLI and the security test matrix know both outcomes.
import { allOperations, isSecured, label, responsesOf } from './lib/openapi.js';

export default (doc, _options, context) => {
  const results = [];
  for (const { method, route, op, path } of allOperations(doc, context.path)) {
    if (!isSecured(doc, op)) continue;
    const missing = ['401', '403'].filter((code) => !(code in responsesOf(op)));
    if (missing.length) {
      results.push({ message: `${label(method, route)} is secured but does not declare ${missing.join(' and ')}.`, path: [...path, 'responses'] });
    }
  }
  return results;
};
