// Helpers shared by the OpenAPI house-rule functions. Rules run on the *resolved* document
// (every $ref followed, YAML merge keys applied), so a path item here already holds the
// operations, parameters and responses pulled in from the context files.

export const METHODS = ['get', 'put', 'post', 'delete', 'options', 'head', 'patch', 'trace'];

export const isObject = (value) => value !== null && typeof value === 'object' && !Array.isArray(value);

// "POST /v1/api-keys": how messages name an operation, so a finding reads without the path.
export const label = (method, route) => `${method.toUpperCase()} ${route}`;

// Yields {method, op, path} for each operation of one path item; `path` is the JSON path of
// the operation (what Spectral needs to point at the right line).
export function* operationsOf(pathItem, pathItemPath) {
  if (!isObject(pathItem)) return;
  for (const method of METHODS) {
    if (isObject(pathItem[method])) yield { method, op: pathItem[method], path: [...pathItemPath, method] };
  }
}

// Every operation of the document (given: "$"): adds `route`, the path template.
export function* allOperations(doc, docPath = []) {
  if (!isObject(doc) || !isObject(doc.paths)) return;
  for (const [route, item] of Object.entries(doc.paths)) {
    for (const found of operationsOf(item, [...docPath, 'paths', route])) yield { ...found, route };
  }
}

// The route of a path item from the JSON path Spectral gives a rule on "$.paths[*]".
export const routeOf = (path) => String(path[path.length - 1]);

// The parameters that apply to an operation: the path item's, overridden by the operation's
// (OpenAPI: same name + location replaces). Each comes with the JSON path it was declared at.
export function effectiveParameters(pathItem, pathItemPath, op, opPath) {
  const byKey = new Map();
  const add = (list, base) => {
    if (!Array.isArray(list)) return;
    list.forEach((param, i) => {
      if (isObject(param)) byKey.set(`${param.in}:${param.name}`, { param, path: [...base, 'parameters', i] });
    });
  };
  add(pathItem.parameters, pathItemPath);
  add(op.parameters, opPath);
  return [...byKey.values()];
}

export const hasParameter = (params, name, location) =>
  params.some(({ param }) => param.in === location && String(param.name).toLowerCase() === name.toLowerCase());

// Header lookup is case-insensitive, as in HTTP.
export const hasHeader = (headers, name) =>
  isObject(headers) && Object.keys(headers).some((key) => key.toLowerCase() === name.toLowerCase());

export const responsesOf = (op) => (isObject(op.responses) ? op.responses : {});

// The JSON schema of a response body (application/json or a +json type), if any.
export function jsonSchemaOf(response) {
  if (!isObject(response) || !isObject(response.content)) return undefined;
  for (const [type, media] of Object.entries(response.content)) {
    if (/^application\/(.+\+)?json$/.test(type) && isObject(media) && isObject(media.schema)) return media.schema;
  }
  return undefined;
}

// An operation is secured unless its effective security is empty or offers an anonymous
// alternative ({}); the operation's own `security` replaces the document's.
export function isSecured(doc, op) {
  const security = Array.isArray(op.security) ? op.security : Array.isArray(doc.security) ? doc.security : [];
  if (security.length === 0) return false;
  return security.every((requirement) => isObject(requirement) && Object.keys(requirement).length > 0);
}
