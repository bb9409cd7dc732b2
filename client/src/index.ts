/**
 * @taskgate/client — call taskgate request types from TypeScript as if they were async
 * functions. `createClient` + `client.request`, or `configureTaskgate` once and then
 * `makeBackendRequest` anywhere. React bindings: `@taskgate/client/react`. Types from the
 * host's plugins: the `taskgate-codegen` command.
 */

export { createClient, TaskgateClient } from './client.js';
export type { AttachOptions, AuthCallback, AuthFields, ClientOptions, RequestFunction, RequestOptions, TasksOptions } from './client.js';
export type { TaskInfo, TaskState } from './tasks.js';
export type { SessionOptions, StorageLike } from './resume.js';
export { configureTaskgate, getDefaultClient, makeBackendRequest, setDefaultClient } from './default-client.js';
export type { ConnectionState, StateListener } from './connection-state.js';
export { ERROR_CODES, TaskgateError, isErrorObject, isTaskgateError } from './errors.js';
export type { ErrorCode, ErrorObject, PayloadProblem, ProtocolErrorCode } from './errors.js';
export type {
  ChunkOf,
  KnownRequestType,
  PayloadOf,
  RequestTypeSpec,
  ResultOf,
  IsStrict,
  TaskgateRequestMap,
  TaskgateTypeOptions,
  UnknownRequestType,
} from './request-map.js';
export { EVENTS, SESSION_EVENTS, defaultSocketFactory } from './socket.js';
export type { AttachBody, Listener, RequestEnvelope, ResponseMessage, SocketFactory, SocketFactoryOptions, SocketLike } from './socket.js';
