/** `tsgi/adapters`: bridges between TSGI and other application shapes. */
export { fromFetch, toFetch, requestUrl, requestHeaders } from './fetch';
export type { FetchHandler, FetchContext, ToFetchOptions } from './fetch';
