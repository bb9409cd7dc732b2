/**
 * `makeBackendRequest`: `request` on a default client, so that application code calls the
 * backend like a function without passing a client around. Configure it once at start-up
 * (`configureTaskgate({ url })`, or `setDefaultClient(client)` with a client you made).
 */

import { createClient, type ClientOptions, type RequestFunction, type TaskgateClient } from './client.js';

let defaultClient: TaskgateClient | undefined;

/** Creates the default client and returns it. */
export function configureTaskgate(options: ClientOptions = {}): TaskgateClient {
  const client = createClient(options);
  setDefaultClient(client);
  return client;
}

/** Makes `client` the default client (`undefined` unsets it). The previous one is left open. */
export function setDefaultClient(client: TaskgateClient | undefined): void {
  defaultClient = client;
}

/** The default client; throws if none was configured. */
export function getDefaultClient(): TaskgateClient {
  if (!defaultClient) {
    throw new Error('taskgate: no default client; call configureTaskgate({ url }) or setDefaultClient(client) first');
  }
  return defaultClient;
}

/** `request` on the default client (see `RequestFunction`). Rejects if no default client is configured. */
export const makeBackendRequest: RequestFunction = ((requestType: string, payload: unknown, options?: object) => {
  let client: TaskgateClient;
  try {
    client = getDefaultClient();
  } catch (error) {
    return Promise.reject(error);
  }
  return (client.request as (t: string, p: unknown, o?: object) => Promise<unknown>)(requestType, payload, options);
}) as RequestFunction;
